"""hf served load, before/after: ``serving.py``'s ``with_single`` on one deployment, run from a worktree.

    PYTHONPATH=<worktree> python served.py <worktree> <deployment>
"""

import json
import sys

sys.path.insert(0, sys.argv[1] + "/benchmarks")
from serving import with_single  # noqa: E402  (the worktree's benchmarks/ first)

dep = sys.argv[2]
r = with_single(["--deployment", dep, "--engine", "hf"], 32, 32, 8, 8)
print(json.dumps({"deployment": dep, "tree": sys.argv[1], "c8_out_tok_s": r["output_throughput"],
                  "c8_ttft_p50": r["median_ttft_ms"], "c1_out_tok_s": r["c1"]["output_throughput"],
                  "c1_ttft_p50": r["c1"]["median_ttft_ms"], "p90_e2el": r["p90_e2el_ms"],
                  "load_avg": r["load_average"]}, default=float))
