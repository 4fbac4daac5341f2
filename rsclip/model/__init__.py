"""The model room: loading, naming, identifying, converting and publishing CLIP models.

:mod:`~rsclip.model.clip` loads a model and encodes images and texts; :mod:`~rsclip.model.sources` resolves
every kind of model source (hub id, ``save_pretrained`` folder, ``s3://`` prefix, conversion spec) and names the
weights behind it; :mod:`~rsclip.model.locations` says where models are (the cache, hub ids);
:mod:`~rsclip.model.hub` reads hub models from the Hugging Face cache first, asking the hub once only when
missing; :mod:`~rsclip.model.versions` publishes model folders atomically; :mod:`~rsclip.model.preprocess` is
CLIP's image preprocessing in numpy and Pillow (decode workers use it without torch); :mod:`~rsclip.model.prompts` and
:mod:`~rsclip.model.vectors` serve zero-shot classification and search; :mod:`~rsclip.model.checkpoints` and
:mod:`~rsclip.model.clip_bpe` read checkpoints and build the tokenizer for :mod:`rsclip.model.convert`, which only
this room imports (callers elsewhere use :func:`rsclip.model.sources.convert_model`). Nothing is imported here:
a Ray task imports the one submodule it needs.
"""
