"""Diffusion depth refinement: the UNet, the losses, and the scheduler / sampling pipeline."""
