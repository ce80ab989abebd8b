"""Score (prompt, image) pairs with the native `image_reward` built-in and print the scores as JSON.

Run by `test_vision_env.py` with the core environment's Python, so the package (vision env) and our scorer
(core env, transformers 5.x, no torchvision) each run where they are meant to:
    python native_scores.py MODEL_DIR CASES_JSON     # CASES_JSON: [{"prompt": str, "image": "x.npy"}, ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    model_dir, cases_path = argv
    import rewards

    cases = json.loads(Path(cases_path).read_text())
    samples = [
        rewards.Sample(task="t2i", prompt=c["prompt"], response="", image=np.load(c["image"])) for c in cases
    ]
    reward = rewards.get("image_reward", path=model_dir, batch_size=len(samples))
    print(json.dumps(reward(samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
