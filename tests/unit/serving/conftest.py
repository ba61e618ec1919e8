import pytest
from serving_fakes import make_client


@pytest.fixture()
def client():
    return make_client()[0]
