"""Post-processing speed: runtime (numpy) vs the PyTorch reference, same process, same features.

Planted features of SSD-1B's shape (tokens x 1280 channels, ~10 regions) on 16x16, 32x32
and 64x64 grids; per stage (NCut, assignment at 128x128, PAMR at 128x128 and 512x512) the
median wall time of repeated runs, and the reference/runtime ratio. Both sides use the
same thread budget: set it with --threads (BLAS and torch threads).

    python benchmarks/bench_postprocess.py                      # 16, 32 (+ reference), 64 runtime only
    python benchmarks/bench_postprocess.py --threads 1 --ref-grids 16 32 64 --json out.json
    python benchmarks/bench_postprocess.py --threads 1 --grids 32 --ref-grids --baseline 28dc37e

``--baseline REV`` also times the runtime of another git revision in the same run (its
``diffcut_edge/`` is extracted with ``git archive`` and run in a subprocess on the same
features), and prints old vs new per stage with the labels' agreement.

Not a test: numbers depend on the machine and its load (record them in RESULTS.md). On a
shared machine compare the process-CPU figures of a --threads 1 run: with several threads
CPU time also counts spin-waiting, and wall time counts other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=int, nargs="+", default=[16, 32, 64], help="square token grids")
    p.add_argument(
        "--ref-grids",
        type=int,
        nargs="*",
        default=[16, 32],
        help="grids on which the reference also runs (64x64 takes minutes per run)",
    )
    p.add_argument("--repeats", type=int, default=5, help="runs per runtime stage (median)")
    p.add_argument("--ref-repeats", type=int, default=3, help="runs per reference stage (median)")
    p.add_argument("--threads", type=int, default=None, help="BLAS/torch threads (default: library default)")
    p.add_argument("--regions", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    p.add_argument(
        "--baseline",
        metavar="GIT_REV",
        default=None,
        help="also time the runtime of this git revision, same run, same features",
    )
    p.add_argument("--labels-out", type=Path, default=None, help=argparse.SUPPRESS)  # baseline runs
    return p.parse_args()


def _run_baseline(args: argparse.Namespace) -> tuple[dict, dict]:
    """Time the runtime of git revision ``args.baseline``: (rows by grid, labels by grid)."""
    import subprocess
    import tarfile
    import tempfile

    import numpy as np

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="diffcut-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", args.baseline, "diffcut_edge"], check=True, capture_output=True
        ).stdout
        tar_path = Path(tmp) / "src.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(Path(tmp) / "src", filter="data")
        out, labels = Path(tmp) / "rows.json", Path(tmp) / "labels.npz"
        cmd = [
            sys.executable,
            __file__,
            "--grids",
            *map(str, args.grids),
            "--ref-grids",
            "--repeats",
            str(args.repeats),
            "--regions",
            str(args.regions),
            "--noise",
            str(args.noise),
            "--seed",
            str(args.seed),
            "--json",
            str(out),
            "--labels-out",
            str(labels),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        env = dict(os.environ, PYTHONPATH=str(Path(tmp) / "src"))  # ahead of the editable install
        print(f"baseline {args.baseline}: timing its runtime in a subprocess ...", flush=True)
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        rows = {r["grid"]: r for r in json.loads(out.read_text())["rows"]}
        with np.load(labels) as z:
            return rows, {k: z[k] for k in z.files}


def _print_baseline(rev: str, rows: list[dict], base_rows: dict, base_labels: dict, labels: dict, by_cpu: bool) -> None:
    col, basis = (1, "CPU") if by_cpu else (0, "wall")
    print(f"\nthis tree vs {rev} (same run; ms {basis}; ratio = old / new)")
    for row in rows:
        old = base_rows[row["grid"]]
        same = {
            k: bool((labels[f"{row['grid']}-{k}"] == base_labels[f"{row['grid']}-{k}"]).all())
            for k in ("coarse", "assign")
        }
        print(f"  {row['grid']}: labels identical to the baseline: NCut {same['coarse']}, assignment {same['assign']}")
        for stage, key in (
            ("NCut", "ncut"),
            ("assignment 128", "assign"),
            ("NCut + assignment", "pipeline"),
            ("floor: F Fᵀ", "floor"),
            ("PAMR 128x128", "pamr128"),
            ("PAMR 512x512", "pamr512"),
            ("total (PAMR 128)", "total"),
        ):
            if f"{key}_ms" not in old:
                continue
            new_ms, old_ms = row[f"{key}_ms"][col], old[f"{key}_ms"][col]
            print(f"    {stage:<20}{old_ms:>9.1f} -> {new_ms:>7.1f}  {old_ms / new_ms:>5.2f}x")


def _median_ms(fn, repeats: int) -> tuple[tuple[float, float], object]:
    """((median wall ms, median process-CPU ms), last result).

    CPU time is the figure to compare on a shared machine: with one thread per library it
    is what the stage costs, while wall time also counts waiting for other processes.
    """
    wall, cpu, out = [], [], None
    for _ in range(max(1, repeats)):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return (statistics.median(wall), statistics.median(cpu)), out


def main() -> None:
    args = _parse()
    if args.threads:
        # Must precede the first numpy/scipy import to reach OpenBLAS.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

    import numpy as np

    from diffcut_edge.runtime import assign_concepts, pamr_refine, recursive_ncut
    from helpers.runtime_planted import matched_agreement, planted_case, resize_nearest

    ref = None
    if args.ref_grids:
        import torch

        from diffcut_edge import diffcut_ref as ref

        if args.threads:
            torch.set_num_threads(args.threads)

    # Warm up imports and LAPACK/ARPACK paths so the first grid is not charged for them.
    warm = planted_case((16, 16), 4, 0.2, 99)
    recursive_ncut(warm.features, warm.grid)
    pamr_refine(warm.image, resize_nearest(warm.regions, (128, 128)))

    base_rows, base_labels = _run_baseline(args) if args.baseline else ({}, {})
    rows, kept_labels = [], {}
    for g in args.grids:
        case = planted_case((g, g), args.regions, args.noise, args.seed, image_size=(512, 512))
        image128 = planted_case((g, g), args.regions, args.noise, args.seed, image_size=(128, 128)).image
        grid = (g, g)
        row: dict = {"grid": f"{g}x{g}", "tokens": g * g, "channels": case.features.shape[1]}

        ms, res = _median_ms(lambda: recursive_ncut(case.features, grid), args.repeats)
        row.update(ncut_ms=ms, segments=res.num_segments)
        coarse = res.labels
        row["assign_ms"], labels = _median_ms(lambda: assign_concepts(case.features, grid, coarse), args.repeats)
        row["pamr128_ms"], _ = _median_ms(lambda: pamr_refine(image128, labels), args.repeats)
        row["pamr512_ms"], _ = _median_ms(lambda: pamr_refine(case.image, labels), max(1, args.repeats // 2))
        kept_labels[f"{g}x{g}-coarse"], kept_labels[f"{g}x{g}-assign"] = np.asarray(coarse), np.asarray(labels)
        row["total_ms"] = _add(row["ncut_ms"], row["assign_ms"], row["pamr128_ms"])
        # As Postprocess runs them: the tokens checked and normalised once, shared by both stages.
        row["pipeline_ms"], _ = _median_ms(_ncut_and_assign(case.features, grid), args.repeats)
        # The floor the issue measures against: the affinity product of the unit tokens alone.
        unit = case.features / np.linalg.norm(case.features, axis=1, keepdims=True)
        row["floor_ms"], _ = _median_ms(lambda: unit @ unit.T, args.repeats)

        if ref is not None and g in args.ref_grids:

            def ref_ncut():
                return ref.assemble_labels(ref.recursive_ncut(case.features, grid), grid)

            row["ref_ncut_ms"], ref_coarse = _median_ms(ref_ncut, args.ref_repeats)
            row["agreement_ncut"] = matched_agreement(coarse, ref_coarse)
            row["ref_assign_ms"], ref_labels = _median_ms(
                lambda: ref.assign_concepts(case.features, grid, coarse.astype(np.int64)), args.ref_repeats
            )
            row["agreement_assign"] = float((ref_labels == labels).mean())
            row["ref_pamr128_ms"], _ = _median_ms(lambda: ref.pamr_refine(image128, labels), args.ref_repeats)
            row["ref_pamr512_ms"], _ = _median_ms(lambda: ref.pamr_refine(case.image, labels), 1)
            row["ref_total_ms"] = _add(row["ref_ncut_ms"], row["ref_assign_ms"], row["ref_pamr128_ms"])
        rows.append(row)
        _print_row(row, by_cpu=args.threads == 1)

    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))
    if args.labels_out:
        np.savez(args.labels_out, **kept_labels)
    if args.baseline:
        _print_baseline(args.baseline, rows, base_rows, base_labels, kept_labels, by_cpu=args.threads == 1)


def _ncut_and_assign(features, grid):
    """NCut + assignment on tokens prepared once (``ncut.unit_tokens``; revisions before it: raw features)."""
    from diffcut_edge.runtime import assign_concepts, recursive_ncut

    try:
        from diffcut_edge.runtime.ncut import unit_tokens
    except ImportError:  # a baseline revision without Tokens

        def unit_tokens(x, grid):
            return x

    def run():
        tokens = unit_tokens(features, grid)
        return assign_concepts(tokens, grid, recursive_ncut(tokens, grid).labels)

    return run


def _add(*pairs: tuple[float, float]) -> tuple[float, float]:
    return (sum(p[0] for p in pairs), sum(p[1] for p in pairs))


def _print_row(row: dict, by_cpu: bool) -> None:
    """One grid's table; the speed-up uses CPU time with one thread, wall time otherwise."""
    basis = "CPU" if by_cpu else "wall"
    print(
        f"\n{row['grid']} tokens x {row['channels']} channels, {row['segments']} segments "
        f"(ms: wall / process CPU; speed-up from {basis} time)"
    )
    print(f"  {'stage':<20}{'runtime':>18}{'reference':>20}{'speed-up':>10}")
    for stage, key in (
        ("NCut", "ncut"),
        ("assignment 128", "assign"),
        ("NCut + assignment", None),
        ("  tokens once", "pipeline"),
        ("  floor: F Fᵀ", "floor"),
        ("PAMR 128x128", "pamr128"),
        ("PAMR 512x512", "pamr512"),
        ("total (PAMR 128)", "total"),
    ):
        if key is None:
            ours = _add(row["ncut_ms"], row["assign_ms"])
            theirs = _add(row["ref_ncut_ms"], row["ref_assign_ms"]) if "ref_ncut_ms" in row else None
        else:
            ours, theirs = row[f"{key}_ms"], row.get(f"ref_{key}_ms")
        ref_txt = f"{theirs[0]:>10.1f} / {theirs[1]:>7.1f}" if theirs else f"{'-':>20}"
        col = 1 if by_cpu else 0
        ratio = f"{theirs[col] / ours[col]:>9.1f}x" if theirs else f"{'-':>10}"
        print(f"  {stage:<20}{ours[0]:>8.1f} / {ours[1]:>7.1f}{ref_txt}{ratio}")
    col = 1 if by_cpu else 0
    print(f"  NCut + assignment (tokens once) / floor: {row['pipeline_ms'][col] / row['floor_ms'][col]:.2f}x")
    if "agreement_ncut" in row:
        print(f"  agreement with reference: NCut {row['agreement_ncut']:.4f}, assignment {row['agreement_assign']:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
