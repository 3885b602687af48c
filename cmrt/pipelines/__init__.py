"""Text-to-image pipelines (latent consistency models) in PyTorch: the LCM scheduler's formulas
(``lcm``), the stages as exportable modules (``modules``), and loading a diffusers folder
(``load``). ``cmrt.exporter.pipeline`` exports them; ``cmrt.Pipeline`` runs the bundle."""
