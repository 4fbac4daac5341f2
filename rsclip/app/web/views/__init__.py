"""The Streamlit parts of the web app's page: the six views (``search``: text, image, labels; ``detections``,
``changes``, ``feature_finder``), what they share (``results``: map, tile panel, cards; ``maps``, ``timeline``,
``tile_image``, ``downloads``, ``labelling``) and the sidebar (``sidebar`` with ``date_filter``)."""
