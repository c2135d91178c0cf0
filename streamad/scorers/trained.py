"""What every trained scorer shares: a torch network, an Adam optimiser and exact state.

:class:`NetworkScorer` holds the network, the optimiser and the training counters (frames,
steps, epoch and position in the feature cache, last loss), implements the protocol's
bookkeeping (update = one step on a live batch, merge refused) and turns all of it into arrays
and back (:meth:`NetworkScorer.state`): the weights and batch-norm buffers as one float64 vector
(exact for float32 values and counts), Adam's moments in parameter order. A method subclasses it
with its network, :meth:`NetworkScorer.loss` and :meth:`NetworkScorer.distances`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from streamad.errors import ConfigError, StoreError
from streamad.features.extractor import Features
from streamad.scorers.base import FitCounts, ScorerState, TrainingRows, TrainRun, TrainStep

PAPER_STEPS = 3000  # PFM/PEFM: 200 epochs of batch 16 over an MVTec AD category (~240 images)
MIN_EPOCHS, MAX_EPOCHS = 5, 200


def default_epochs(frames: int, batch_size: int, steps: int = PAPER_STEPS) -> int:
    """The papers' schedule scaled to the data: about as many optimiser steps as 200 epochs on
    an MVTec AD category (or a method's own ``steps``), within [5, 200] epochs (few frames:
    more epochs; many: fewer).

    Example:
        >>> default_epochs(200, 16), default_epochs(5000, 16), default_epochs(20, 16)
        (200, 10, 200)
    """
    steps_per_epoch = max(1, math.ceil(frames / batch_size))
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(steps / steps_per_epoch))))


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of the cache's rows in one epoch (a permutation fixed by seed and epoch)."""
    return np.random.default_rng([seed, 1_000_003, epoch]).permutation(size)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def seeded(seed: int, build: Callable[[], ModuleT]) -> ModuleT:
    """``build()`` with torch's global generator seeded (and restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class NetworkScorer(FitCounts):
    """Base of the trained scorers (not mergeable: partial trainings do not combine).

    Args:
        method: the ``--method`` name (recorded and checked on load).
        net: the network, built by the subclass (seeded with :func:`seeded`).
        lr, weight_decay: Adam's settings.
        feature_names: the prepared features the method reads (and the cache keeps).
    """

    def __init__(
        self, *, method: str, seed: int, net: nn.Module, lr: float, weight_decay: float, feature_names: tuple[str, ...], device: torch.device | str
    ) -> None:
        self.method, self.seed = method, seed
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.lr, self.weight_decay = lr, weight_decay
        self.feature_names = feature_names
        self.optimiser = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self._frames = 0
        self._steps = 0
        self._finalised = False
        self.epoch = 0  # training epochs over the feature cache completed
        self.position = 0  # frames of the current epoch's order already trained on
        self.loss = float("nan")  # the last step's loss
        self.net.eval()

    # -- what a method defines ---------------------------------------------------------------

    def loss_of(self, prepared: Features) -> Tensor:
        """The training loss of a batch (a scalar with gradients)."""
        raise NotImplementedError

    def distances(self, prepared: Features) -> Tensor:
        raise NotImplementedError

    def method_attrs(self) -> dict[str, Any]:
        """Settings besides method, seed, lr and weight decay (compared on resume)."""
        return {}

    # -- protocol ----------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Optimiser steps taken."""
        return self._steps

    def attrs(self) -> dict[str, Any]:
        return {"method": self.method, "seed": self.seed, **self.method_attrs(), "lr": self.lr, "weight_decay": self.weight_decay}

    def prepare(self, features: Features) -> Features:
        return {name: features[name].float() for name in self.feature_names}

    def update(self, prepared: Features) -> None:
        """Streaming learning (a live camera): one optimiser step on this batch."""
        self._frames += next(iter(prepared.values())).shape[0]
        self.train_step(prepared)

    def add_frames(self, count: int) -> None:
        """Count frames that went into the feature cache instead of :meth:`update`."""
        self._frames += count

    def train_step(self, prepared: Features) -> float:
        """One Adam step on :meth:`loss_of` the batch."""
        self._finalised = False
        self.net.train()
        # Features straight from the extractor (live learning) are inference tensors, which
        # autograd may not save: a plain copy of those.
        prepared = {name: f.clone() if f.is_inference() else f for name, f in prepared.items()}
        with torch.enable_grad():
            loss = self.loss_of(prepared)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
        self._steps += 1
        self.loss = float(loss.detach())
        return self.loss

    def finalise(self) -> None:
        self.net.eval()
        self._finalised = True

    @property
    def trained(self) -> TrainStep:
        return TrainStep(self.epoch, self.position, 0, self.loss)

    def train(self, rows: TrainingRows, size: int, run: TrainRun) -> bool:
        """Run the remaining epochs over the first ``size`` rows, from the current epoch and
        position, telling ``run`` each step and checkpointing as it says. Returns whether every
        epoch ran."""
        if size < 1:
            raise ConfigError("expected at least one frame in the feature cache to train on, got none; hint: fit on more frames")
        if self.epoch < run.epochs:
            rows.preload(size)
        since = 0
        while self.epoch < run.epochs:
            order = epoch_order(rows.seed, self.epoch, size)
            while self.position < size:
                if run.stopped():
                    run.checkpoint()
                    return False
                slots = order[self.position : self.position + run.batch_size]
                self.train_step(rows.read(slots, self.device))
                self.position += len(slots)
                run.on_step(TrainStep(self.epoch, self.position, len(slots), self.loss))
                since += len(slots)
                if since >= run.checkpoint_every:
                    run.checkpoint()
                    since = 0
            self.epoch, self.position = self.epoch + 1, 0
        run.checkpoint()
        return True

    # -- state -------------------------------------------------------------------------------

    def state(self) -> ScorerState:
        """Weights and batch-norm buffers as one float64 vector, Adam's moments as float32
        vectors in parameter order, plus the training position."""
        tensors = self.net.state_dict().values()
        arrays = {"net": torch.cat([t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors]).numpy()}
        moments = [self.optimiser.state.get(p) for p in self.net.parameters()]
        if all(moments):
            arrays["adam_exp_avg"] = torch.cat([m["exp_avg"].reshape(-1).cpu() for m in moments]).numpy()  # type: ignore[index]
            arrays["adam_exp_avg_sq"] = torch.cat([m["exp_avg_sq"].reshape(-1).cpu() for m in moments]).numpy()  # type: ignore[index]
            arrays["adam_step"] = np.array([float(m["step"]) for m in moments], np.float64)  # type: ignore[index]
        attrs = {
            **self.attrs(),
            "frames_seen": self._frames,
            "steps": self._steps,
            "epoch": self.epoch,
            "position": self.position,
            "loss": None if math.isnan(self.loss) else self.loss,
            "finalised": self._finalised,
        }
        revision = hashlib.sha256(f"{self.method}:{self.seed}:{self._steps}:{self._frames}".encode()).hexdigest()[:16]
        return ScorerState(arrays, attrs, revision)

    def load_state(self, state: ScorerState) -> None:
        if state.attrs.get("method") != self.method or state.attrs.get("seed") != self.seed:
            raise StoreError(f"expected the state of method {self.method} with seed {self.seed}, got {state.attrs.get('method')} / {state.attrs.get('seed')}")
        current = self.net.state_dict()
        flat = torch.from_numpy(np.asarray(state.arrays.get("net", np.zeros(0))))
        if flat.numel() != sum(t.numel() for t in current.values()):
            raise StoreError(f"expected {sum(t.numel() for t in current.values())} network values, got {flat.numel()}")
        loaded, at = {}, 0
        for key, t in current.items():
            loaded[key] = flat[at : at + t.numel()].view(t.shape).to(t.dtype)
            at += t.numel()
        self.net.load_state_dict(loaded)
        if "adam_exp_avg" in state.arrays:
            self._load_moments(state)
        self._frames = int(state.attrs.get("frames_seen", 0))
        self._steps = int(state.attrs.get("steps", 0))
        self.epoch, self.position = int(state.attrs.get("epoch", 0)), int(state.attrs.get("position", 0))
        loss = state.attrs.get("loss")
        self.loss = float("nan") if loss is None else float(loss)
        self._finalised = bool(state.attrs.get("finalised"))
        self.net.eval()

    def _load_moments(self, state: ScorerState) -> None:
        avg, avg_sq = (torch.from_numpy(np.asarray(state.arrays[name])) for name in ("adam_exp_avg", "adam_exp_avg_sq"))
        at = 0
        for param, step in zip(self.net.parameters(), state.arrays["adam_step"], strict=True):
            n = param.numel()
            self.optimiser.state[param] = {
                "step": torch.tensor(float(step), dtype=torch.float32),
                "exp_avg": avg[at : at + n].view(param.shape).to(self.device).clone(),
                "exp_avg_sq": avg_sq[at : at + n].view(param.shape).to(self.device).clone(),
            }
            at += n
