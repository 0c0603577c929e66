"""sparserl.errors: a ConfigError names its field and is a ValueError."""

import pytest

from sparserl.errors import ConfigError


def test_a_config_error_names_its_field_and_reason():
    with pytest.raises(ValueError, match=r"^network.kind: unknown kind 'rnn'$") as raised:
        raise ConfigError("network.kind", "unknown kind 'rnn'")
    assert (raised.value.field, raised.value.reason) == ("network.kind", "unknown kind 'rnn'")
