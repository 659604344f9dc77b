"""The demonstration run: the whole method, end to end, in a few minutes.

`run_demo` generates the built-in synthetic data (or loads another
source), trains a VAE and an MLP with the `demo` preset, evaluates them
against popularity and EASE on held-out users, computes the latent mean of
each tag, runs a small steering study, draws every plot into one folder,
and picks a sample user to show unsteered and steered recommendations.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from songrec_jax import evaluation, latent, pipeline
from songrec_jax.config import DataConfig, preset
from songrec_jax.training import History

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DemoReport:
    """What the demo did and found.

    Attributes:
      out: the output folder.
      data: the data summary.
      tables: per protocol, the evaluation table.
      headline: the steering study's headline per method.
      sample: the sample user's recommendations, unsteered and steered.
      files: every file written.
      seconds: wall time per stage.
    """

    out: Path
    data: dict
    tables: dict[str, evaluation.EvaluationTable]
    headline: dict
    sample: dict
    files: list[Path]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "data": self.data,
            "tables": {p: t.to_dict() for p, t in self.tables.items()},
            "headline": self.headline,
            "sample": self.sample,
            "files": [str(f) for f in self.files],
            "seconds": self.seconds,
        }

    def format(self) -> str:
        d = self.data
        lines = [
            f"data: {d['users']} users, {d['songs']} songs, {d['listens']} "
            f"listens, {d['tags']} tags",
            "",
        ]
        for protocol, table in self.tables.items():
            lines += [f"test users, {protocol} protocol:", table.format(), ""]
        lines += [
            "steering toward each test user's dominant tag:",
            evaluation.format_headline(self.headline),
            "",
        ]
        s = self.sample
        lines.append(
            f"sample user {s['user']} (mostly {s['dominant_tag']}), "
            f"{s['history_length']} songs listened:"
        )
        for title, rows in s["lists"].items():
            lines.append(f"\n  {title}")
            for r in rows:
                lines.append(
                    f"   {r['rank']:>2}. {r['name']:<32} [{', '.join(r['tags'][:3])}]"
                )
        lines += ["", f"plots and results in {self.out}/:"]
        lines += [f"  {f}" for f in self.files]
        lines.append(
            "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        )
        return "\n".join(lines)


def run_demo(
    out: str | Path = "z_data/demo",
    *,
    data: list[str] | None = None,
    quick: bool = False,
    progress: bool = True,
    checkpoints: str | Path = "checkpoints/demo",
) -> DemoReport:
    """Runs the demonstration; see the module docstring.

    Args:
      out: folder for plots and results.
      data: `[source, path]` to use real data instead of the synthetic.
      quick: a smoke run (small data, few epochs, small grids).
      progress: show progress bars.
      checkpoints: parent folder of the two runs' checkpoints.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = round(now - clock, 1)
        clock = now
        log.info("%s done in %.0f s", stage, seconds[stage])

    config = preset("demo")
    if data:
        source, path = (data + [""])[:2]
        config = config.replace(
            data=DataConfig(
                source=source, path=path, min_user_listens=5, min_song_listens=5
            )
        )
    if quick:
        config = config.replace(train=dataclasses.replace(config.train, epochs=3))
        if config.data.source == "synthetic":
            config = config.replace(
                data=dataclasses.replace(
                    config.data, n_users=800, n_songs=400, n_tags=8
                )
            )

    vae = pipeline.prepare(config, checkpoints=checkpoints)
    lap("data")
    log.info("training the VAE (%s)", vae.name)
    vae = pipeline.train(vae, progress=progress)
    mlp_config = vae.config.replace(
        model=dataclasses.replace(vae.config.model, kind="mlp"),
        loss=dataclasses.replace(vae.config.loss, beta=0.0, anneal_steps=0),
    )
    log.info("training the MLP (%s)", mlp_config.name)
    mlp = pipeline.train(
        pipeline.prepare(mlp_config, data=vae.data, checkpoints=checkpoints),
        progress=progress,
    )
    lap("training")

    tables = pipeline.evaluate(vae, extra={"MLP": mlp})
    lap("evaluation")

    analysis = pipeline.analyze(vae, z_data=out, progress=progress)
    alphas = (0.0, 1.0, 4.0) if quick else (0.0, 0.5, 1.0, 2.0, 4.0)
    results = pipeline.sweep(
        vae, analysis.tag_latents, z_data=out, alphas=alphas, min_users=5
    )
    headline = evaluation.steering_headline(results)
    lap("latent space and steering")

    files = []
    for run in (vae, mlp):
        target = out / f"history_{run.config.model.kind}"
        run_history = json.loads((run.directory / "history.json").read_text())
        History.from_dict(run_history).plot(target, title=f"{run.label}: training")
        files += [target.with_suffix(".png"), target.with_suffix(".pdf")]
    files += analysis.files
    z_dir = vae.z_dir(out)
    files += [z_dir / "steering.json", z_dir / "steering.png", z_dir / "steering.pdf"]
    sample = _sample_user(vae, analysis)
    report = DemoReport(
        out, vae.data.summary(), tables, headline, sample, files, seconds
    )
    (out / "report.json").write_text(
        json.dumps(report.to_dict(), indent=1, default=str)
    )
    report.files.append(out / "report.json")
    return report


def _sample_user(run: pipeline.Run, analysis: pipeline.Analysis) -> dict:
    """A test user with a dominant tag, and two other tags to steer toward."""
    test = pipeline.split_of(run, "test")
    data, tl = run.data, analysis.tag_latents
    dominant = latent.dominant_tags_of_split(data, test, which="input")
    lengths = test.input_lengths()
    candidates = np.flatnonzero((dominant >= 0) & (lengths >= 5))
    row = int(candidates[0]) if len(candidates) else 0
    mine = int(dominant[row])
    by_users = [
        int(t)
        for t in np.argsort(-tl.counts, kind="stable")
        if t != mine and tl.counts[t] > 0
    ]
    targets = [str(tl.tag_names[t]) for t in by_users[:2]]
    songs = test.input_songs(row)
    lists = {"unsteered": pipeline.recommend_history(run, songs, k=10)}
    for tag in targets:
        lists[f"steered toward {tag} (latent + post-filter, alpha=1)"] = (
            pipeline.recommend_history(
                run,
                songs,
                k=10,
                tags={tag: 1.0},
                alpha=1.0,
                method="both",
                tag_latents=tl,
            )
        )
    return {
        "user": str(data.user_ids[test.users[row]]),
        "dominant_tag": str(data.tag_names[mine]) if mine >= 0 else "none",
        "history_length": int(lengths[row]),
        "steer_tags": targets,
        "lists": lists,
    }
