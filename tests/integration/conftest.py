from collections.abc import Iterator

import pytest

from tests.integration.scenario import dispose_engines


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    dispose_engines()
