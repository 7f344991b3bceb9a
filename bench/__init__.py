"""resnet-bench: train, time and draw plain vs residual networks (He et al., 2015)."""
