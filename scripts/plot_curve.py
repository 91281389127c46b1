"""Draw a training log (train_log.json: a list of {"update", "loss", "valid_loss"?}) as an SVG line chart.

python scripts/plot_curve.py runs/demo-model/pretrain/last/train_log.json docs/demo_learning_curve.svg
"""

import json
import sys

W, H, PAD = 640, 360, 50


def main(src: str, dst: str) -> None:
    log = json.loads(open(src).read())
    train = [(e["update"], e["loss"]) for e in log]
    valid = [(e["update"], e["valid_loss"]) for e in log if "valid_loss" in e]
    xs = [u for u, _ in train]
    ys = [v for _, v in train + valid]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)

    def pt(u, v):
        x = PAD + (u - x0) / max(x1 - x0, 1) * (W - 2 * PAD)
        return x, H - PAD - (v - y0) / max(y1 - y0, 1e-9) * (H - 2 * PAD)

    def line(points, color):
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="' + " ".join(
            f"{x:.1f},{y:.1f}" for x, y in (pt(u, v) for u, v in points)) + '"/>'  # fmt: skip

    axis = 'stroke="black"'
    ylabel = f'x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle"'
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" {axis}/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" {axis}/>',
        line(train, "#1f77b4"),
        line(valid, "#d62728") if len(valid) > 1 else "",
        f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">update</text>',
        f"<text {ylabel}>loss (nats/token)</text>",
        f'<text x="{PAD}" y="{H - PAD + 16}">{x0}</text>',
        f'<text x="{W - PAD}" y="{H - PAD + 16}" text-anchor="end">{x1}</text>',
        f'<text x="{PAD - 4}" y="{H - PAD}" text-anchor="end">{y0:.2f}</text>',
        f'<text x="{PAD - 4}" y="{PAD + 4}" text-anchor="end">{y1:.2f}</text>',
        f'<text x="{W - PAD}" y="{PAD - 10}" text-anchor="end" fill="#1f77b4">train</text>',
        f'<text x="{W - PAD}" y="{PAD + 6}" text-anchor="end" fill="#d62728">validation</text>',
        "</svg>",
    ]
    open(dst, "w").write("\n".join(p for p in parts if p) + "\n")
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
