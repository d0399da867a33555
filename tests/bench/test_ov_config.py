"""--ov-config KEY=VALUE: OpenVINO properties from a bench tool's command line."""

import pytest

from fastimg_bench import ov_config


def test_pairs_become_properties_and_a_value_may_hold_an_equals_sign():
    assert ov_config.parse(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    assert ov_config.parse([]) == {}


@pytest.mark.parametrize("pair", ["SNIPPETS_MODE", "=DISABLE"])
def test_a_pair_without_a_key_or_a_value_is_refused_with_the_form(pair):
    with pytest.raises(SystemExit, match="give KEY=VALUE"):
        ov_config.parse([pair])
