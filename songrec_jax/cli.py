"""The `songrec` command line: one subcommand per step, and `demo`.

    songrec demo                               # the whole method, synthetic data
    songrec data [--data SOURCE [PATH]]        # summary of a data source
    songrec train --config configs/NAME.toml [--resume]
    songrec evaluate --config configs/NAME.toml
    songrec recommend --config ... --user ID --tag jazz=1 --alpha 1
    songrec analyze --config ...               # latent means, clusters, plots
    songrec sweep --config ...                 # the steering study

Every subcommand prints a readable table, or one JSON object with `--json`.
A user mistake prints one line on stderr and exits with status 2 (`--debug`
shows the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from songrec_jax.config import Config, load_config, preset
from songrec_jax.errors import InputError, SongrecError

log = logging.getLogger("songrec_jax")


def _config(args) -> Config:
    """The config named by --config (a file or a preset), with --data applied."""
    spec = args.config
    config = (
        load_config(spec)
        if spec.endswith(".toml") or Path(spec).exists()
        else preset(spec)
    )
    if args.data:
        from songrec_jax.config import DataConfig

        source, *rest = args.data
        if len(rest) > 1:
            raise InputError(f"--data takes SOURCE [PATH], got {args.data}")
        fields = {"source": source, "path": rest[0] if rest else ""}
        if source == config.data.source:
            fields = {**dataclasses.asdict(config.data), **fields}
        config = config.replace(data=DataConfig(**fields))
    if getattr(args, "epochs", None):
        config = config.replace(
            train=dataclasses.replace(config.train, epochs=args.epochs)
        )
    return config


def _run(args, *, trained: bool = True):
    from songrec_jax import pipeline

    if getattr(args, "run", None):
        return pipeline.open_run(args.run)
    run = pipeline.prepare(_config(args), checkpoints=args.checkpoints)
    if trained:
        return pipeline.open_run(run.directory, data=run.data)
    return run


def _emit(args, payload: dict, text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=1, default=str))
    else:
        print(text)


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _songs_table(rows: list[dict]) -> str:
    return _table(
        [
            [r["rank"], r["name"], f"{r['score']:.4g}", ", ".join(r["tags"][:4])]
            for r in rows
        ],
        ["#", "song", "score", "tags"],
    )


# Subcommands --------------------------------------------------------------


def cmd_data(args) -> None:
    from songrec_jax import pipeline

    summary = pipeline.load_data(_config(args).data).summary()
    text = "\n".join(
        [
            f"{k:>22}: {v:.5f}" if isinstance(v, float) else f"{k:>22}: {v}"
            for k, v in summary.items()
            if k != "top_tags"
        ]
        + ["\ntop tags (songs):"]
        + [f"  {name:<20} {n}" for name, n in summary["top_tags"]]
    )
    _emit(args, summary, text)


def cmd_train(args) -> None:
    from songrec_jax import pipeline

    if args.distributed:
        from songrec_jax import sharding

        sharding.initialize_distributed(
            args.coordinator, args.num_processes, args.process_id
        )
    mesh = None
    if args.distributed or args.model_shards > 1 or args.data_shards:
        from songrec_jax import sharding

        mesh = sharding.make_mesh(data=args.data_shards, model=args.model_shards)
    run = pipeline.prepare(_config(args), checkpoints=args.checkpoints)
    run = pipeline.train(run, resume=args.resume, progress=not args.json, mesh=mesh)
    history = json.loads((run.directory / "history.json").read_text())
    records = [r for group in history["runs"] for r in group]
    last = records[-1] if records else {}
    payload = {
        "run": run.name,
        "directory": str(run.directory),
        "epochs": len(records),
        "history": history,
        "val": last.get("val", {}),
    }
    rows = [
        [
            r["epoch"],
            f"{r['lr']:.2g}",
            f"{r['train']['total']:.4f}",
            f"{r['val']['total']:.4f}",
            f"{r['val'].get('ndcg', float('nan')):.4f}",
            r["patience"],
            "*" if r["improved"] else "",
        ]
        for r in records
    ]
    text = _table(
        rows,
        ["epoch", "lr", "train loss", "val loss", "val NDCG@100", "patience", "best"],
    )
    _emit(
        args,
        payload,
        f"{text}\n\ncheckpoints: {run.directory}\n"
        f"history plot: {run.directory / 'history.png'}",
    )


def cmd_evaluate(args) -> None:
    from songrec_jax import pipeline

    run = _run(args)
    protocols = (
        ("input_target", "strong") if args.protocol == "both" else (args.protocol,)
    )
    tables = pipeline.evaluate(run, protocols=protocols, ease=not args.no_ease)
    payload = {"run": run.name, **{p: t.to_dict() for p, t in tables.items()}}
    text = "\n\n".join(
        f"{p} protocol, {t.n_users} test users\n{t.format()}" for p, t in tables.items()
    )
    _emit(args, payload, text)


def cmd_recommend(args) -> None:
    import numpy as np

    from songrec_jax import latent, pipeline, streaming

    run = _run(args)
    tags = pipeline.parse_tags(args.tag)
    tag_latents = None
    if tags and args.method != "postfilter":
        tag_latents = latent.load_tag_latents(run.z_dir(args.z_data))
    steering = dict(
        tags=tags,
        alpha=args.alpha,
        method=args.method,
        data=run.data,
        tag_latents=tag_latents,
    )
    if args.users_file:
        users = Path(args.users_file).read_text().split()
        rows = np.array([pipeline.user_index(run.data, u) for u in users], np.int64)
        steering = {k: v for k, v in steering.items() if k != "tags" or v}
        manifest = streaming.stream_recommend(
            run.params,
            run.config,
            pipeline.user_inputs(run, rows, args.chunk_size),
            args.out,
            k=args.k,
            chunk_size=args.chunk_size,
            progress=not args.json,
            **(steering if tags else {}),
        )
        _emit(
            args,
            {"users": len(rows), "out": args.out, "manifest": manifest},
            f"recommended {args.k} songs for {len(rows)} users into {args.out}/ "
            "(read them with songrec_jax.streaming.read_recommendations)",
        )
        return
    if args.history:
        songs = pipeline.song_indexes(run.data, args.history.split(","))
        who = f"history of {len(songs)} songs"
    elif args.user:
        songs = run.data.user_songs(pipeline.user_index(run.data, args.user))
        who = f"user {args.user}"
    else:
        raise InputError(
            "name whom to recommend for: --user ID, --history "
            "SONG,SONG,... or --users-file FILE"
        )
    rows = pipeline.recommend_history(
        run, songs, k=args.k, **{k: v for k, v in steering.items() if k != "data"}
    )
    steered = (
        f", steered toward {tags} (alpha={args.alpha}, {args.method})" if tags else ""
    )
    _emit(
        args,
        {
            "for": who,
            "tags": tags,
            "alpha": args.alpha,
            "method": args.method,
            "songs": rows,
        },
        f"top {args.k} for {who}{steered}\n{_songs_table(rows)}",
    )


def cmd_analyze(args) -> None:
    from songrec_jax import pipeline

    run = _run(args)
    analysis = pipeline.analyze(
        run,
        z_data=args.z_data,
        split=args.split,
        which=args.which,
        n_clusters=args.clusters,
        method=args.method,
        progress=not args.json,
    )
    tl = analysis.tag_latents
    order = sorted(range(len(tl.tag_names)), key=lambda t: -int(tl.counts[t]))
    rows = [[tl.tag_names[t], int(tl.counts[t])] for t in order[:15]]
    clusters = [
        [i, ", ".join(f"{t} {share:.0%}" for t, _, share in top[:3])]
        for i, top in enumerate(analysis.clusters)
    ]
    payload = {
        "run": run.name,
        "users_without_tags": int(tl.skipped_users),
        "tag_users": {str(tl.tag_names[t]): int(tl.counts[t]) for t in order},
        "clusters": analysis.clusters,
        "files": [str(f) for f in analysis.files],
    }
    text = (
        _table(rows, ["tag", "users"]) + f"\n(users without tags: "
        f"{tl.skipped_users})\n\n"
        + _table(clusters, ["cluster", "top tags"])
        + "\n\nwritten:\n"
        + "\n".join(f"  {f}" for f in analysis.files)
    )
    _emit(args, payload, text)


def cmd_sweep(args) -> None:
    from songrec_jax import evaluation, latent, pipeline

    run = _run(args)
    z_dir = run.z_dir(args.z_data)
    tag_latents = (
        latent.load_tag_latents(z_dir)
        if (z_dir / "tag_latents.npz").exists()
        else pipeline.analyze(run, z_data=args.z_data).tag_latents
    )
    alphas = tuple(float(a) for a in args.alphas.split(","))
    results = pipeline.sweep(
        run,
        tag_latents,
        z_data=args.z_data,
        alphas=alphas,
        min_users=args.min_users,
        k=args.k,
        target=args.target,
    )
    headline = evaluation.steering_headline(results)
    stem = pipeline.steering_stem(args.target)
    files = [str(z_dir / f"{stem}.json"), str(z_dir / f"{stem}.png")]
    _emit(
        args,
        {"run": run.name, "target": args.target, "headline": headline, "files": files},
        evaluation.format_headline(headline) + f"\n\nwritten: {', '.join(files)}",
    )


def cmd_demo(args) -> None:
    from songrec_jax import demo

    report = demo.run_demo(
        out=Path(args.out),
        data=args.data,
        quick=args.quick,
        progress=not args.json,
        checkpoints=args.checkpoints,
    )
    _emit(args, report.to_dict(), report.format())


# Parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="songrec",
        description="Autoencoder music recommendation with tag steering (songrec_jax).",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logging"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data",
        nargs="+",
        metavar=("SOURCE", "PATH"),
        help="data source (synthetic, lastfm-hetrec, msd, movielens, "
        "tsv, npz) and its path; default: the config's",
    )
    data.add_argument(
        "--config",
        default="demo",
        help="config file (configs/NAME.toml) or preset name (default: demo)",
    )
    run = argparse.ArgumentParser(add_help=False, parents=[data])
    run.add_argument(
        "--checkpoints",
        default="checkpoints",
        help="parent folder of the runs' checkpoints",
    )
    run.add_argument("--run", help="a run's checkpoint folder (overrides --config)")
    run.add_argument(
        "--z-data",
        default="z_data",
        help="parent folder of latent statistics and plots",
    )

    p = sub.add_parser("data", parents=[common, data], help="summarise a data source")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", parents=[common, run], help="train a model")
    p.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint"
    )
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (multi-host)",
    )
    p.add_argument("--coordinator", help="coordinator address host:port")
    p.add_argument("--num-processes", type=int, help="number of processes")
    p.add_argument("--process-id", type=int, help="this process's id")
    p.add_argument(
        "--model-shards",
        type=int,
        default=1,
        help="devices on the mesh's model axis (songs are split over "
        "them); the rest go on the data axis",
    )
    p.add_argument(
        "--data-shards",
        type=int,
        help="devices on the data axis (default: all the others)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        parents=[common, run],
        help="test metrics against popularity and EASE",
    )
    p.add_argument(
        "--protocol", default="both", choices=("both", "input_target", "strong")
    )
    p.add_argument("--no-ease", action="store_true", help="skip the EASE baseline")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", parents=[common, run], help="top songs")
    p.add_argument("--user", help="a user id (or row) of the data")
    p.add_argument("--history", help="comma-separated song ids (or indexes)")
    p.add_argument(
        "--users-file", help="file of user ids; results are streamed to --out"
    )
    p.add_argument(
        "--out", default="recommendations", help="output folder for --users-file"
    )
    p.add_argument(
        "--chunk-size", type=int, default=4096, help="users per chunk for --users-file"
    )
    p.add_argument("--k", type=int, default=10, help="songs to recommend")
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="NAME[=WEIGHT]",
        help="steer toward a tag (repeatable)",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="steering strength")
    p.add_argument(
        "--method", default="postfilter", choices=("postfilter", "latent", "both")
    )
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser(
        "analyze",
        parents=[common, run],
        help="latent means per tag, clusters and plots",
    )
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument(
        "--which",
        default="input",
        choices=("input", "target"),
        help="dominant tag from the input or the target songs",
    )
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--method", default="pca", choices=("pca", "tsne"))
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("sweep", parents=[common, run], help="the steering study")
    p.add_argument("--alphas", default="0,0.25,0.5,1,2,4")
    p.add_argument("--min-users", type=int, default=10)
    p.add_argument("--k", type=int, default=100)
    p.add_argument(
        "--target",
        default="dominant",
        choices=["dominant", "random"],
        help="steer each test user towards their dominant tag or a random other",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "demo", parents=[common], help="the whole method on synthetic (or given) data"
    )
    p.add_argument(
        "--data",
        nargs="+",
        metavar=("SOURCE", "PATH"),
        help="run on another source, e.g. lastfm-hetrec DIR",
    )
    p.add_argument("--out", default="z_data/demo", help="output folder")
    p.add_argument("--checkpoints", default="checkpoints/demo")
    p.add_argument(
        "--quick",
        action="store_true",
        help="fewer epochs and a smaller grid (a smoke run)",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("absl", "jax", "orbax", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)
    if getattr(args, "json", False):
        logging.getLogger("songrec_jax").setLevel(logging.WARNING)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("songrec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`songrec data | head`)
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (SongrecError, FileNotFoundError, PermissionError) as e:
        if debug:
            raise
        print(f"songrec {args.command}: error: {e}", file=sys.stderr)
        from songrec_jax.training import TrainingInterrupted

        return 130 if isinstance(e, TrainingInterrupted) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
