"""The web app's one upload widget: ``st.file_uploader`` under the session's upload caps
(:class:`rsclip.app.web.data.uploads.UploadLedger`), replaced and refused uploads released from the server's memory."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx
from streamlit.runtime.uploaded_file_manager import UploadedFile

from rsclip.app.web.data.uploads import UPLOAD_TYPES, UploadLedger
from rsclip.app.web.keys import STATE_UPLOADS
from rsclip.app.web.text import escape_markdown


def release_uploads(file_ids) -> None:
    """Forget uploads ``file_ids`` of this session in Streamlit's upload store (its in-memory store's
    ``remove_file``, as Streamlit's chat input does; another store keeps them until the session ends)."""
    ctx = get_script_run_ctx()
    remove = getattr(getattr(ctx, "uploaded_file_mgr", None), "remove_file", None)
    if ctx is None or remove is None:
        return
    for file_id in file_ids:
        remove(session_id=ctx.session_id, file_id=file_id)


def image_uploader(label: str, key: str, on_change=None) -> UploadedFile | None:
    """An uploader of one image (the types of :data:`~rsclip.app.web.data.uploads.UPLOAD_TYPES`) whose upload
    is returned only within the session's caps: past them, one error line and None, its bytes released; the
    upload it replaces is released too."""
    upload = st.file_uploader(label, type=list(UPLOAD_TYPES), key=key, on_change=on_change)
    ledger = st.session_state.setdefault(STATE_UPLOADS, UploadLedger())
    if upload is None:
        admission = ledger.admit(key, None)
    else:
        admission = ledger.admit(key, upload.file_id, upload.size, upload.name)
    release_uploads(admission.released)
    if admission.refusal is not None:
        st.error(f"Upload refused: {escape_markdown(admission.refusal)}")
        return None
    return upload
