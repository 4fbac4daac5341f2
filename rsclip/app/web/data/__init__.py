"""What the web app shows, as plain data and without Streamlit (the views draw it): map features and events
(``mapdata``), dates and time limits (``timedata``), tile previews (``previews``), uploads (``uploads``), the
feature finder's scoring (``finder``), download files (``download_files``), and detection runs (``detection_runs``,
each run a ``detect_worker`` process)."""
