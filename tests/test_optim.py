import pytest
import torch

from langseg.errors import ConfigError
from langseg.optim import ExponentialLRWithFloor


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> list[float]:
    optimizer = scheduler.optimizer
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _optimizer(lr: float = 3e-4) -> torch.optim.Optimizer:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def test_exponential_lr_with_floor_decays_by_gamma_then_holds_the_floor():
    lrs = _lrs(ExponentialLRWithFloor(_optimizer(), gamma=0.99, floor=0.1), 300)
    first_floor = next(i for i, lr in enumerate(lrs) if lr == pytest.approx(3e-5, rel=1e-12))
    assert 0.99 ** first_floor <= 0.1 < 0.99 ** (first_floor - 1)  # the first epoch where 0.99^epoch <= 0.1
    for before, after in zip(lrs[:first_floor - 1], lrs[1:first_floor]):
        assert after == pytest.approx(0.99 * before, rel=1e-9)
    assert lrs[first_floor:] == pytest.approx([3e-5] * (300 - first_floor), rel=1e-12)
    unfloored = _lrs(torch.optim.lr_scheduler.ExponentialLR(_optimizer(), gamma=0.99), 300)
    assert _lrs(ExponentialLRWithFloor(_optimizer(), gamma=0.99), 300) == pytest.approx(unfloored, rel=1e-9)


def test_exponential_lr_with_floor_resumes_from_its_state_dict():
    scheduler = ExponentialLRWithFloor(_optimizer(), gamma=0.9, floor=0.5)
    whole = _lrs(scheduler, 12)
    first = ExponentialLRWithFloor(_optimizer(), gamma=0.9, floor=0.5)
    _lrs(first, 5)
    resumed = ExponentialLRWithFloor(_optimizer(), gamma=0.9, floor=0.5)  # Lightning's order: build, then load
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())
    resumed.load_state_dict(first.state_dict())
    assert whole[5:] == pytest.approx(_lrs(resumed, 7), rel=1e-12)


@pytest.mark.parametrize("arguments, field", [({"gamma": 0.0}, "gamma=0.0"), ({"gamma": 1.5}, "gamma=1.5"),
                                               ({"gamma": 0.99, "floor": -0.1}, "floor=-0.1")])
def test_exponential_lr_with_floor_names_a_bad_argument(arguments, field):
    with pytest.raises(ConfigError, match=field):
        ExponentialLRWithFloor(_optimizer(), **arguments)
