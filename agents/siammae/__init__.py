"""SiamMAE baseline (Gupta et al., 2023) in MWM style: agents/siammae/README.md."""
