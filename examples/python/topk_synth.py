#!/usr/bin/env python3
"""TopK SAE on data with known ground truth (sae.synth, Sharkey et al. 2022), scored by MMCS.

    PYTHONPATH=build/python /usr/bin/python3 examples/python/topk_synth.py

64 true features in 32 dimensions, 20,000 samples; a 64-latent TopK SAE (k = 5), Adam, 20
epochs, one thread: the settings of the CLI's test GroundTruth.TopkAndL1RecoverSyntheticFeatures,
so the model is the bits `sae synth` + `sae train` give (MMCS 0.9707 from `sae eval
--ground-truth` too). Expected output (about a second):

    data [20000, 32], 5.00 active features per sample
    trained 1580 steps: J_total 0.0981, l0 4.95
    MMCS 0.9707 (min 0.6302, median 0.9952); 58 of 64 features above 0.9
"""
import numpy as np

import sae

s = sae.synth(features=64, dim=32, samples=20000, seed=1)
x, truth = s["data"], s["features"]
print(f"data [{x.shape[0]}, {x.shape[1]}], {s['mean_active']:.2f} active features per sample")

model = sae.train(x, architecture="topk", k=5, d_sae=64, optimizer="adam", lr=0.003, batch_size=256, epochs=20,
                  threads=1, log_every=1000, normalize="none")
e = model.evaluate(x, ground_truth=truth)
print(f"trained {model.summary['steps']} steps: J_total {e['J_total']:.4f}, l0 {e['l0']:.2f}")
m = sae.mmcs(truth, model.tensors["W_dec"])
above = int(np.sum(np.array(m["per_feature"]) > 0.9))
print(f"MMCS {m['mmcs']:.4f} (min {m['mmcs_min']:.4f}, median {m['mmcs_median']:.4f}); "
      f"{above} of {len(truth)} features above 0.9")
