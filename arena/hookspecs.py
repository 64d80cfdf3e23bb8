"""Every hook the arena calls, with its contract. Plugins implement them with ``@arena.hookimpl``.

Two families:

- register hooks (called once when plugins load) receive ``register``, a callable taking a plugin class of that kind
  (a subclass of ``arena.Dataset``, ``arena.Model``, a defense stage, ``arena.Attack`` or ``arena.Suite``). The
  registry records which plugin registered it, so a name claimed twice is reported with both providers;
- reporter hooks (called during a run) receive plain data about the run; an exception in one is logged and
  ignored, so a broken reporter never stops a tournament.

Stability: ``HOOKSPEC_VERSION`` is bumped whenever a hook's signature or contract changes incompatibly. New hooks
and new optional keyword arguments do not bump it (pluggy passes an implementation only the arguments it names).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pluggy

from arena.kinds import Attack, Dataset, Defense, Model, Suite
from arena.records import Matchup, Run

hookspec = pluggy.HookspecMarker("arena")

#: Bumped when a hook's signature or contract changes incompatibly.
HOOKSPEC_VERSION = 3


@hookspec
def arena_register_datasets(register: Callable[[type[Dataset]], None]) -> None:
    """Register dataset classes: ``load(split, data_dir)`` returns float images in [0, 1] (NCHW, any size and channel
    count) and int64 labels; ``input_shape()`` states one image's ``(C, H, W)`` before loading, when it can."""


@hookspec
def arena_register_models(register: Callable[[type[Model]], None]) -> None:
    """Register model classes: ``build(num_classes)`` returns a fresh ``nn.Module`` from [0, 1] images to
    ``num_classes`` logits, untrained unless the class sets ``pretrained = True`` (then ``identity()`` names its
    weights and the arena never trains it, except under a training-time defense). ``input_problem(shape)`` refuses,
    when the scenario is validated, data of a shape the model cannot take; ``classes_problem(num_classes)``, stored
    weights made for another number of classes."""


@hookspec
def arena_register_defenses(register: Callable[[type[Defense]], None]) -> None:
    """Register defense classes, each a subclass of one stage.

    - ``arena.TrainingDefense``: ``train(model, images, labels, trainer)`` trains the model in place (the weights are
      cached under the defense's name and parameters);
    - ``arena.Preprocessor``: ``__call__(images)`` maps [0, 1] images to [0, 1] images before the model; declare
      ``differentiable = False`` to be attacked through ``estimate_gradient`` (BPDA) and ``randomized = True`` to be
      attacked with EOT;
    - ``arena.Postprocessor``: ``__call__(probabilities)`` maps class probabilities after the model.

    The arena composes them into one ``nn.Module`` from [0, 1] images to logits, which is what every attack sees.
    """


@hookspec
def arena_register_attacks(register: Callable[[type[Attack]], None]) -> None:
    """Register attack classes: built with ``(model, threat, **params)``, called on ``(images, labels)``.

    The returned batch must have the input's shape and dtype; the arena audits it against the threat model.
    """


@hookspec
def arena_register_suites(register: Callable[[type[Suite]], None]) -> None:
    """Register suite classes: ``attacks()`` lists member attack entries, which a scenario entry naming the suite
    expands to and plays as a cascade (each member only on the samples every earlier member failed on)."""


@hookspec
def arena_run_started(run_id: str, run: Run, results_dir: Path, report_to: list[str]) -> None:
    """A run has started: ``run`` is its stored ``arena.Run`` (scenario name and text, threat model, seed, samples,
    device). ``report_to`` names the opt-in reporters the scenario or ``--report-to`` asked for (``mlflow``); a
    reporter that is not always on acts only when named there."""


@hookspec
def arena_matchup_finished(run_id: str, matchup: Matchup, results_dir: Path) -> None:
    """A matchup has been stored (status ``ok``, ``invalid`` or ``error``, or reused from an earlier run)."""


@hookspec
def arena_run_finished(
    run_id: str, status: str, results_dir: Path, summary: Path | None, report: Path | None
) -> None:
    """A run has ended with ``status`` ``complete`` or ``interrupted``; every matchup is in the store. A complete run's
    ``summary`` (``runs/<run id>.json``: the run, every matchup, the leaderboard rows) is written, and so is its
    ``report`` folder (pictures and ``leaderboard.html``) unless reports are off; both are None otherwise."""
