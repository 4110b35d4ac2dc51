"""Training: windows from synthetic clips, the paper's loss and alignment-mode mix, DDP-ready loop."""
