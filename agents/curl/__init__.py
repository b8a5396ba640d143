"""CURL (Laskin et al., 2020): contrastive representations with Rainbow (discrete) or SAC (continuous).

See agents/curl/README.md for the equations, the choices made and the commands.
"""
