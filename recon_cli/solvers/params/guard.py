"""Defaults of the learned solvers' out-of-distribution guard (recon_cli.solvers.learned_guard), kept
free of numpy for the parameter models of ``unet`` and ``rising``."""

#: The network's output is implausible when its data residual exceeds this factor times the baseline's.
IMPLAUSIBLE_FACTOR = 1.5

#: Default largest ratio of the network output's residual to the data's expected misfit (unet solver).
#: Measured on the evaluation suite's test cases (benchmarks/results/learned.md, postproc_envelope):
#: network outputs 1.5-7 dB above FBP (Hann) had 1.2-4.6x the misfit, FBP (Hann) itself 0.96-5.05x;
#: factors 1.25-3 only replaced such outputs by the worse FBP. 5 flags outputs far above the noise.
NOISE_FACTOR = 5.0
