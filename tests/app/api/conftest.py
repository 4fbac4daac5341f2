"""What the API's tests share: one table of scenes with a label set and its detections, and one service over it
(started once for the package: a detection run on Ray and a service process are the slow part)."""

from __future__ import annotations

import pytest

from tests.helpers.api import start_api
from tests.helpers.geo import detected_scene_table


@pytest.fixture(scope="package")
def scenes(tmp_path_factory, tiny_model):
    """NAIP and Landsat scenes cut into 128 px tiles, a label set and its detections."""
    db = tmp_path_factory.mktemp("api") / "db"
    return db, detected_scene_table(db, tiny_model)[1]


@pytest.fixture(scope="package")
def api_service(scenes, tmp_path_factory):
    served = start_api(scenes[0], tmp_path_factory.mktemp("api-logs"), "--min-score", "0")
    yield served
    served.stop()
