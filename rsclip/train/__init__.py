"""Fine-tuning CLIP: settings, data and transforms, the loss, the plain-torch loop, the Ray Train driver, metrics,
seeds.
"""
