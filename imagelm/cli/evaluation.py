"""Evaluation verbs: `ref-stats`, `eval` (FID / IS / precision / recall) and the `study`."""
from __future__ import annotations

from imagelm.cli import flags


def ref_stats(a) -> None:
    from imagelm.eval.features import dataset_images, load_feature_net, reference_stats
    net = load_feature_net(a.features, a.inception, a.classifier, a.device or "cpu", a.batch_size)
    images = dataset_images(a.data, a.image_size, a.split, a.num, a.seed, progress=True)
    info = reference_stats(images, net, a.out, keep_feats=not a.no_feats, keep_images=not a.no_images,
                           data=a.data, split=a.split)
    layout = "ADM layout: arr_0, mu, sigma, mu_s, sigma_s" if info["adm"] else "mu, sigma"
    print(f"reference statistics of {info['images']} {a.data} images ({net.name}, {info['dim']}-d; {layout}): {a.out}")


def evaluate(a) -> None:
    import json
    import sys
    from pathlib import Path

    from imagelm.eval.features import evaluate_samples, load_feature_net
    net = load_feature_net(a.features, a.inception, a.classifier, a.device or "cpu", a.batch_size)
    r = evaluate_samples(a.samples, a.ref, net, k=a.k, splits=a.splits, pr_max=a.pr_max)
    rows = [("FID", r["fid"]), ("sFID", r["sfid"]), ("IS", r["is"]), ("precision", r["precision"]),
            ("recall", r["recall"])]
    if "class_accuracy" in r:
        rows.append(("class accuracy", r["class_accuracy"]))
    print(f"{r['samples']} samples vs {a.ref} ({r['feature_net']})")
    for name, value in rows:
        print(f"  {name:<15} {'n/a' if value is None else f'{value:.4f}'}")
    for note in r["notes"]:
        print(f"  note: {note}")
    for warning in r["warnings"]:
        print(f"imagelm eval: warning: {warning}", file=sys.stderr)
    out = Path(a.json or Path(a.samples).with_suffix(".eval.json"))
    out.write_text(json.dumps({**r, "ref": str(a.ref), "samples_file": str(a.samples)}, indent=2))
    print(f"metrics: {out}")


def study(a) -> None:
    from imagelm.study import run_study
    run_study(a.out, data=a.data, budget=a.budget, seed=a.seed, precision=a.precision)


def register(sub) -> None:
    rs = sub.add_parser("ref-stats", help="reference statistics (mu, sigma, features) of real images")
    flags.data(rs, default=None, image_size=32, length=False)
    rs.add_argument("--out", required=True)
    rs.add_argument("--split", default="train")
    rs.add_argument("--num", type=int, default=None, help="use the first N images")
    rs.add_argument("--no-feats", action="store_true", help="do not store our pool features (eval then "
                    "recomputes them from the images for precision/recall)")
    rs.add_argument("--no-images", action="store_true", help="do not store the images as arr_0 (smaller; "
                    "ADM's evaluator needs them, precision/recall then need feats)")
    flags.features(rs)
    flags.runtime(rs)
    rs.set_defaults(func=ref_stats)

    ev = sub.add_parser("eval", help="FID / IS / precision / recall of a sample batch against a reference")
    ev.add_argument("--samples", required=True, help=".npz with arr_0 uint8 [N, H, W, 3]")
    ev.add_argument("--ref", required=True, help="an ADM reference batch (arr_0, mu, sigma, mu_s, sigma_s), a "
                    "ref-stats .npz (the same layout), pytorch-fid mu+sigma, or an image batch")
    ev.add_argument("--json", default=None, help="where to write the metrics (default: SAMPLES.eval.json)")
    ev.add_argument("--k", type=int, default=3, help="neighbours for precision/recall")
    ev.add_argument("--splits", type=int, default=None,
                    help="Inception Score over N equal parts (default: ADM's 5,000-image splits)")
    ev.add_argument("--pr-max", type=int, default=None,
                    help="at most this many of each set for precision/recall (default: all, as ADM)")
    flags.features(ev)
    flags.runtime(ev, seed=False)
    ev.set_defaults(func=evaluate)

    st = sub.add_parser("study", help="ELM's design-space study at small scale: report.md + plots")
    st.add_argument("--out", default="study")
    st.add_argument("--data", default="shapes-simple")
    st.add_argument("--budget", default="default", choices=["smoke", "default"],
                    help="smoke: ~2 min (tests); default: ~25 min on a 2-core CPU")
    st.add_argument("--precision", default="auto", choices=flags.PRECISIONS)
    st.add_argument("--seed", type=int, default=0)
    st.set_defaults(func=study)
