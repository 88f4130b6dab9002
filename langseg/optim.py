"""Learning-rate schedules that torch does not ship, usable from YAML and the CLI (``--model.lr_scheduler``)."""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from langseg.errors import ConfigError


class ExponentialLRWithFloor(LRScheduler):
    """Learning rate ``lr_0 * max(gamma ** epoch, floor)``: decays by ``gamma`` per step, never below ``floor * lr_0``.

    RecLMIS's official MosMedData+ schedule is ``gamma=0.99, floor=0.1`` (``max(0.99**epoch, 0.1)``, stepped once
    per epoch; the floor is reached at epoch 230). ``floor=0`` is torch's ``ExponentialLR``.
    """

    def __init__(self, optimizer: Optimizer, gamma: float, floor: float = 0.0, last_epoch: int = -1) -> None:
        if not 0.0 < gamma <= 1.0:
            raise ConfigError(f"ExponentialLRWithFloor: gamma={gamma}; expected a decay factor in (0, 1]")
        if not 0.0 <= floor <= 1.0:
            raise ConfigError(f"ExponentialLRWithFloor: floor={floor}; expected a fraction of the initial lr in [0, 1]")
        self.gamma, self.floor = gamma, floor
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = max(self.gamma ** self.last_epoch, self.floor)
        return [base_lr * factor for base_lr in self.base_lrs]
