import pytest
import torch

from langseg.errors import ConfigError
from langseg.optim import ExponentialLRWithFloor
from tests.test_cli import REPO, TINY
from tests.test_cli_faults import run_main, the_error


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


def test_a_bad_schedule_argument_is_one_line_through_the_cli(tmp_path, capsys):
    line = the_error(*run_main("fit", "--config", str(REPO / "configs" / "unet.yaml"), *TINY, "--model.lr_scheduler",
                               "langseg.optim.ExponentialLRWithFloor", "--model.lr_scheduler.gamma", "1.5",
                               cwd=tmp_path, capsys=capsys)[::2])
    assert "gamma=1.5" in line and "(0, 1]" in line
