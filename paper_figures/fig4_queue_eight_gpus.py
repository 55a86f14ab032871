"""Figure 4: total waiting queue vs time, eight replicas (round-robin), 1:1,
λ ∈ {8, 24, 40, 160, 400} (kvstab simulation).

Reads results/fig4_queue_eight_gpus.json; writes fig4_queue_eight_gpus.{pdf,png}.
Usage: python paper_figures/fig4_queue_eight_gpus.py [--results DIR] [--out DIR]
"""

from __future__ import annotations

from kvstab import reproduce as rp

fig2_queue_one_gpu = rp.sibling(__file__, "fig2_queue_one_gpu")  # shared drawing code

NAME = "fig4_queue_eight_gpus"
INPUTS = ["fig4_queue_eight_gpus"]
OUTPUTS = ["fig4_queue_eight_gpus.pdf", "fig4_queue_eight_gpus.png"]
TITLE = (
    "Figure 4 (kvstab simulation): total waiting queue vs time, eight replicas behind "
    "round-robin, P/D 1:1"
)


def draw(results: dict, out_dir) -> list:
    return fig2_queue_one_gpu.draw_queue(
        results[INPUTS[0]],
        out_dir,
        NAME,
        TITLE,
        INPUTS[0],
        paper_text="8 GPUs: bounded at λ = 8, 24; growing from 40 up",
    )


if __name__ == "__main__":
    import sys

    sys.exit(rp.figure_main(sys.modules[__name__]))
