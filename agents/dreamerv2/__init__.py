"""DreamerV2 from pixels (Hafner et al., ICLR 2021): MWM's ablation."""
