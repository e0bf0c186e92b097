"""Opt-in analyses of an evaluation (``tools/eval_volume.py --diagnostics``), off the standard path.

- :mod:`.clicks`: what each simulated click did (click records, error regions) and what each round
  fixed and broke;
- :mod:`.boundary_band`: the boundary-band DSC, the DSC left with only outline-placement errors;
- :mod:`.report`: what they add to the standard report's files.

docs/evaluation.md ("Diagnostics") describes every field.
"""
