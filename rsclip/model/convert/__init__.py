"""Conversion of CLIP checkpoints that are not safetensors exports into ``save_pretrained`` folders.

:mod:`~rsclip.model.convert.converter` names conversion sources (``open_clip:ARCH:URI``, ``hf-bin:SRC``),
converts them into a new folder or ``s3://`` prefix and keeps one conversion per source in the model cache;
:mod:`~rsclip.model.convert.openclip_arch` and :mod:`~rsclip.model.convert.openclip_weights` describe open_clip
architectures and map their state dicts to transformers' names; :mod:`~rsclip.model.convert.hf_source` fetches
and reads Hugging Face exports whose weights are ``pytorch_model.bin``. Only :mod:`rsclip.model` imports this
package (an import contract); nothing is imported here.
"""
