"""Recommendation quality and tag steering on the Last.fm HetRec 2011 data.

Trains the MLP, VAE and Mult-VAE presets on the training users, tunes a
small grid of hyperparameters (EASE's L2 weight and a few autoencoder
settings, among them Mult-VAE's autoencoding of whole histories) on the
VALIDATION users within a time budget, then reports the test users'
figures once, under both protocols:

    model | NDCG@100 | Recall@20 | Recall@50 | MAP@100     (mean ± s.e.)

next to popularity and EASE, and the headline of the steering study of
each autoencoder, towards each test user's dominant tag and towards a
random other tag: the strength at which steering doubles the tag's share
of the top 100, and the held-out NDCG@100 kept there.

Run (artists play the part of songs):

    SONGREC_LASTFM_DIR=/path/to/hetrec2011-lastfm-2k \\
        python benchmarks/quality_lastfm.py [--budget-minutes 30] [--json]
    python benchmarks/quality_lastfm.py --data DIR --quick   # smoke run

With the default filters (users with >= 5 artists, artists with >= 5
listeners, the 50 most used tags) the data has about 1,860 users and
2,800 artists; 10% of the users are validation and 10% test users. The
full run trains every tuning candidate to convergence and takes roughly
the budget plus a few minutes on a laptop CPU. `--quick` trains each
preset for two epochs, tries two EASE weights and no autoencoder variant
(about 1.5 minutes on two CPU cores). `--out DIR` also writes
`results.json` and one steering figure per model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from songrec_jax import baselines, evaluation, latent, plotting, readers, training
from songrec_jax.config import Config, DataConfig, preset
from songrec_jax.data import ListeningData
from songrec_jax.errors import SongrecError

log = logging.getLogger("quality_lastfm")

PRESETS = {"MLP": "mlp_h2", "VAE": "vae_h2", "Mult-VAE": "mult_vae"}
EASE_GRID = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
# Settings tried for each autoencoder, the preset's own first; "vae" marks
# changes that only apply to variational models.
AUTOENCODING = {"train.target": "all", "train.resample": True}
VARIANTS = (
    ({}, False),
    ({"model.input_dropout": 0.5}, False),
    ({**AUTOENCODING, "model.input_dropout": 0.5}, False),
    ({**AUTOENCODING, "model.input_dropout": 0.5, "train.learning_rate": 3e-3}, False),
    ({"loss.beta": 0.2, "loss.anneal_steps": 2000}, True),
    ({**AUTOENCODING, "model.input_dropout": 0.5, "loss.anneal_steps": 2000}, True),
)
SELECTION_METRIC = "NDCG@100"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("SONGREC_LASTFM_DIR"),
        help="folder of the HetRec .dat files (default: $SONGREC_LASTFM_DIR)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--epochs", type=int, help="maximum epochs of every model")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=30.0,
        help="time for tuning on validation users; the presets always train",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-user-listens", type=int, default=5)
    parser.add_argument("--min-song-listens", type=int, default=5)
    parser.add_argument("--top-tags", type=int, default=50)
    parser.add_argument(
        "--out", type=Path, help="also write results.json and steering plots here"
    )
    return parser.parse_args(argv)


def load(args: argparse.Namespace) -> ListeningData:
    if not args.data:
        sys.exit(
            "no Last.fm data: set SONGREC_LASTFM_DIR or pass --data DIR, the "
            "folder of the HetRec 2011 files (user_artists.dat, tags.dat, ...)"
        )
    folder = Path(args.data)
    if not (folder / "user_artists.dat").is_file():
        sys.exit(
            f"{folder} holds no user_artists.dat: it is not the Last.fm HetRec "
            "2011 folder (set SONGREC_LASTFM_DIR or --data)"
        )
    return readers.read_lastfm_hetrec(
        folder,
        min_user_listens=args.min_user_listens,
        min_song_listens=args.min_song_listens,
        top_tags=args.top_tags,
    )


def with_changes(config: Config, changes: dict[str, Any]) -> Config:
    """The config with "section.field" values replaced."""
    sections: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        section, field = name.split(".")
        sections.setdefault(section, {})[field] = value
    return config.replace(
        **{
            section: dataclasses.replace(getattr(config, section), **fields)
            for section, fields in sections.items()
        }
    )


def base_config(name: str, data: ListeningData, args: argparse.Namespace) -> Config:
    config = training.config_for_data(preset(name), data)
    data_config = DataConfig(
        source="lastfm-hetrec",
        path=str(args.data),
        min_user_listens=args.min_user_listens,
        min_song_listens=args.min_song_listens,
        top_tags=args.top_tags,
    )
    changes: dict[str, Any] = {"train.seed": args.seed}
    if args.quick:
        changes.update({"train.epochs": 2, "train.patience": 1, "train.restarts": 0})
    if args.epochs:
        changes["train.epochs"] = args.epochs
    return with_changes(config.replace(data=data_config), changes)


class Budget:
    """Wall-clock budget of the tuning phase."""

    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + 60.0 * minutes

    def left(self) -> float:
        return self.deadline - time.monotonic()


def tune_ease(train_data, val_split, args, budget: Budget) -> dict[str, Any]:
    grid = EASE_GRID[2:4] if args.quick else EASE_GRID
    if budget.left() <= 0:
        log.info("no tuning time left: EASE keeps l2=500")
        return {"l2": 500.0, "validation_ndcg": {}}
    try:
        best, ndcg = baselines.tune_ease_l2(train_data, val_split, grid)
    except SongrecError as e:  # ResourceError: too many songs for this machine
        log.warning("EASE tuning skipped: %s", e)
        return {"l2": 500.0, "validation_ndcg": {}, "skipped": str(e)}
    log.info("EASE: best l2=%g (validation NDCG@100 %.4f)", best, ndcg[best])
    return {"l2": best, "validation_ndcg": {str(k): v for k, v in ndcg.items()}}


def tune_model(label, data, val_users, args, budget, key) -> dict[str, Any]:
    """Trains the preset and, while the budget lasts, its variants; keeps the
    one of best validation NDCG@100 (strong generalisation)."""
    base = base_config(PRESETS[label], data, args)
    variants = VARIANTS[:1] if args.quick else VARIANTS
    tried, best = [], None
    configs = []
    for changes, vae_only in variants:
        config = with_changes(base, changes)
        if (vae_only and base.model.kind != "vae") or config in configs:
            continue  # not for this model, or what the preset already is
        configs.append(config)
        if best is not None and budget.left() <= 0:
            log.info("%s: out of tuning time, %s not tried", label, changes)
            continue
        started = time.monotonic()
        result = training.train(config, data, progress=False)
        table = evaluation.evaluate(
            {label: baselines.model_scorer(result.params, config)},
            data,
            val_users,
            protocol="strong",
            input_len=config.model.input_len,
            key=key,
        )
        score = table.rows[label][SELECTION_METRIC].mean
        epochs = len(result.history.records)
        log.info(
            "%s %s: validation %s %.4f (%d epochs, %.0f s)",
            label,
            changes or "preset",
            SELECTION_METRIC,
            score,
            epochs,
            time.monotonic() - started,
        )
        tried.append({"changes": changes, "validation_ndcg": score, "epochs": epochs})
        if best is None or score > best[0]:
            best = (score, changes, result)
    return {"tried": tried, "changes": best[1], "result": best[2]}


def test_tables(models, ease, data, data_splits, input_len, key):
    """Test users' figures of every model and baseline, under both protocols."""
    scorers = {
        label: baselines.model_scorer(tuned["result"].params, tuned["result"].config)
        for label, tuned in models.items()
    }
    train_data = data.subset_users(data_splits.train_users)
    scorers.update(
        evaluation.baseline_scorers(train_data, ease=True, ease_l2=ease["l2"])
    )
    return {
        protocol: evaluation.evaluate(
            scorers,
            data,
            data_splits.test_users,
            protocol=protocol,
            input_len=input_len,
            key=key,
        )
        for protocol in evaluation.PROTOCOLS
    }


def steering(models, data, test_split, args) -> dict[str, Any]:
    """The steering study of each autoencoder on the test users, towards each
    user's dominant tag and towards a random other tag; tag latents come
    from its training users."""
    out = {}
    for label, tuned in models.items():
        result = tuned["result"]
        tag_latents = latent.compute_tag_latents(
            result.params,
            result.config,
            data,
            result.splits.train.inputs,
            latent.dominant_tags_of_split(data, result.splits.train),
        )
        out[label] = {}
        for target in evaluation.STEERING_TARGETS:
            results = evaluation.steering_study(
                result.params,
                result.config,
                data,
                test_split,
                tag_latents,
                min_users=5 if args.quick else 10,
                target=target,
                key=args.seed,
            )
            out[label][target] = {
                "headline": evaluation.steering_headline(results),
                "results": results,
            }
            if args.out:
                plotting.plot_steering(
                    results,
                    args.out / f"steering_{label}_{target}.png",
                    metric=["tag_share", "ndcg", "graded_ndcg"],
                    classes=list(results["class_sizes"])[:4],
                    title=f"{label}: steering towards each test user's {target} tag",
                )
    return out


def print_report(report, tables, data, models) -> None:
    print(
        f"Last.fm HetRec 2011: {data.n_users} users, {data.n_songs} artists, "
        f"{data.n_tags} tags; {report['users']}"
    )
    tuned = ", ".join(f"{k} {v['changes'] or 'preset'}" for k, v in models.items())
    print(f"EASE l2={report['ease']['l2']:g}; tuned: {tuned}")
    for protocol, table in tables.items():
        print(f"\nTest users, {protocol} protocol ({table.n_users} users):")
        print(table.format())
    for label, studies in report["steering"].items():
        for target, study in studies.items():
            print(
                f"\nSteering {label} towards each test user's {target} tag "
                f"({study['results']['n_users']} users):"
            )
            print(evaluation.format_headline(study["headline"]))
    print(f"\n({report['seconds']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,  # importing Orbax installs a root handler of its own
    )
    started = time.monotonic()
    data = load(args)
    summary = {k: v for k, v in data.summary().items() if k != "top_tags"}
    log.info("data: %s", summary)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    root = jax.random.key(args.seed)
    val_key, test_key = jax.random.fold_in(root, 1), jax.random.fold_in(root, 2)
    budget = Budget(args.budget_minutes)
    reference = base_config(PRESETS["MLP"], data, args)
    data_splits = training.make_splits(data, reference)
    input_len = reference.model.input_len

    # Tuning: validation users only.
    val_split = evaluation.make_split(
        data, data_splits.val_users, protocol="strong", input_len=input_len, key=val_key
    )
    train_data = data.subset_users(data_splits.train_users)
    ease = tune_ease(train_data, val_split, args, budget)
    models = {
        label: tune_model(label, data, data_splits.val_users, args, budget, val_key)
        for label in PRESETS
    }
    for label, tuned in models.items():  # same seed and fractions: same users
        if not np.array_equal(
            tuned["result"].splits.test_users, data_splits.test_users
        ):
            raise RuntimeError(f"{label} was trained on another split of the users")

    # Test figures, once.
    tables = test_tables(models, ease, data, data_splits, input_len, test_key)
    test_split = evaluation.make_split(
        data,
        data_splits.test_users,
        protocol="strong",
        input_len=input_len,
        key=test_key,
    )
    report = {
        "data": summary,
        "users": {
            "train": len(data_splits.train_users),
            "validation": len(data_splits.val_users),
            "test": len(data_splits.test_users),
        },
        "quick": args.quick,
        "ease": ease,
        "models": {
            label: {
                "config": tuned["result"].config.name,
                "changes": tuned["changes"],
                "tried": tuned["tried"],
            }
            for label, tuned in models.items()
        },
        "test": {protocol: table.to_dict() for protocol, table in tables.items()},
        "steering": steering(models, data, test_split, args),
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(evaluation.json_ready(report), indent=1, allow_nan=False)
    if args.out:
        (args.out / "results.json").write_text(text)
    if args.json:
        print(text)
    else:
        print_report(report, tables, data, models)
    return 0


if __name__ == "__main__":
    sys.exit(main())
