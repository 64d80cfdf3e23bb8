"""The keys that let a run reuse earlier work: a weights key (what a trained network depends on) and a matchup key
(everything that determines a matchup's result, plugin source included), both content hashes."""

from __future__ import annotations

import hashlib
from typing import Any

from arena import conditions
from arena.registry import Registry, source_hash
from arena.runtime import Runtime
from arena.schema import DEFAULT_EXAMPLES, AttackRef, DefenseRef, ModelRef, PluginRef, Scenario
from arena.threat import ThreatModel
from arena.training import content_key

#: A hash of ``arena/conditions.py``: results of conditional entries decided by older rules are not reused.
CONDITIONS_CODE = source_hash(conditions.__file__)


def derive_seed(seed: int, *names: str | int) -> int:
    """A seed for one piece of work, fixed by the scenario seed and its names, not by the order work runs in."""
    return int(hashlib.sha256(repr((seed, *names)).encode()).hexdigest()[:8], 16)


def weights_key(
    scenario: Scenario, model_ref: ModelRef, training: PluginRef | None, train_data: str, device: str,
    pretrained: str | None,
) -> tuple[str, dict[str, Any]]:
    """The weights-cache key of a model trained under ``training`` (a training-time defense or none), and the fields
    it hashes; ``pretrained`` is a pretrained model's identity (its checkpoint's hash)."""
    fields: dict[str, Any] = {
        "model": model_ref.name,
        "model_params": model_ref.params,
        "train": model_ref.train.identity(),
        "defense": [training.name, training.params] if training else None,
        "dataset": [scenario.dataset.name, scenario.dataset.params],
        "train_data": train_data,
        "seed": scenario.seed,
        "device": device,
    }
    if pretrained is not None:
        fields["pretrained"] = pretrained
    return content_key(fields), fields


def seeded_as(registry: Registry, refs: tuple[ModelRef, DefenseRef, AttackRef]) -> list[str] | None:
    """The names a matchup's random draws are seeded from (``derive_seed``) where a label makes them differ from the
    plugins' own names, else None: entries alike but for a label draw differently, so they must not share a result."""
    model_ref, defense_ref, attack_ref = refs
    names = [model_ref.key, defense_ref.key, attack_ref.key]
    plain_attack = (attack_ref.suite in registry.names("suite") if attack_ref.suite
                    else attack_ref.key == attack_ref.name)
    plain = (plain_attack and model_ref.key == model_ref.name
             and defense_ref.key == "+".join(ref.name for ref in defense_ref.chain))
    return None if plain else names


def matchup_key(
    scenario: Scenario, registry: Registry, threat: ThreatModel, runtime: Runtime, active: list[str],
    weights: str, refs: tuple[ModelRef, DefenseRef, AttackRef], source: tuple[str, DefenseRef] | None,
    after: list[str],
) -> str:
    """Everything that determines a matchup's result, plugin source included, so a result can be reused.

    Seed and device are covered by the weights key, and labels the draws are seeded from by ``seeded_as``; a transfer
    attack's source by its own weights key (``source``:
    that key and the source's defense); the samples a cascaded attack runs on by the keys of the attacks before it
    (``after``).
    """
    def plugin(kind: str, ref: PluginRef) -> list[Any]:
        return [ref.name, ref.params, registry.get(kind, ref.name).code_hash]

    model_ref, defense_ref, attack_ref = refs
    crafted = [source[0], [plugin("defense", ref) for ref in source[1].chain]] if source is not None else None
    ds = scenario.dataset
    settings = runtime.key()
    labelled = seeded_as(registry, refs)
    return content_key({
        "weights": weights, "model": plugin("model", model_ref),
        "defense": [plugin("defense", ref) for ref in defense_ref.chain],
        "attack": plugin("attack", attack_ref), "source": crafted,
        "adaptive": [attack_ref.bpda, attack_ref.eot_samples],
        "threat": [threat.norm, threat.eps],
        "eval": [ds.name, ds.params, ds.split, ds.samples], "batch_size": scenario.batch_size,
        # each batch seeded on its own (``arena.engine``): results of the earlier per-matchup seeding differ
        "seeding": "per-batch",
        **({"after": after} if after else {}),
        # a label changes the random draws; plugins' own names stay out, so older keys hold
        **({"seeded_as": labelled} if labelled else {}),
        # a conditional entry's result also depends on the rules that decide whether it runs
        **({"when": [attack_ref.when, CONDITIONS_CODE]} if attack_ref.when else {}),
        **({"runtime": settings} if settings else {}),
        # An active test adds to the matchup's record; asked for, it needs the matchup run again.
        **({"active": [active, scenario.active_samples]} if active else {}),
        # Keeping more examples needs the attack run again; the default stays out, so older keys hold.
        **({"examples": scenario.save_examples} if scenario.save_examples != DEFAULT_EXAMPLES else {}),
    })
