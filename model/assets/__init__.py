"""Checked-in assets and the scripts that rebuild them.

- `tiny_tokenizer/`: the tiny twin of the LLaDA tokenizer (`python -m model.assets.build_tiny_tokenizer`);
- `demo_policy/`: the SFT policy of the embedded demo (docs/demo.md; `python -m jobs.sft --config
  jobs/configs/sft_demo.yaml --set sft.export_to=model/assets/demo_policy`);
- `sign_slip_policy/`: the cold start the embedded RL demo trains (docs/demo.md §6): `demo_policy` fine-tuned on
  a teacher that boxes 70% of its answers with a minus sign (`python -m jobs.sft --config
  jobs/configs/sft_sign_slip.yaml --set sft.export_to=model/assets/sign_slip_policy`);
- `shapes_vq/`: the toy image tokenizer in the MAGVIT-v2 layout (docs/multimodal.md;
  `python -m jobs.tasks.train_shapes_vq --out model/assets/shapes_vq --steps 1500 --seed 0`).
"""
