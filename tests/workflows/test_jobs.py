from pathlib import Path

import pytest

from fastimg.errors import InputError
from fastimg.settings import CallSettings
from fastimg.workflows.jobs import (
    Job,
    Sweep,
    draw_seeds,
    plan_sweep,
    setting_labels,
    shown,
    variant_seeds,
)
from fastimg.workflows.sources import Source

FOX = CallSettings("fox")


def _sources(*names):
    return [Source(Path("in") / name) for name in names]


def test_a_sweep_is_every_combination_per_input_with_one_random_seed_per_input():
    jobs = plan_sweep(
        _sources("a.png", "b.png"), FOX, Sweep(strength=(0.25, 0.5), guidance=(3.0, 7.5))
    )
    assert len(jobs) == 8
    assert [job.source.path.name for job in jobs] == ["a.png"] * 4 + ["b.png"] * 4
    assert {(j.call.strength, j.call.guidance_scale) for j in jobs[:4]} == {
        (0.25, 3.0), (0.25, 7.5), (0.5, 3.0), (0.5, 7.5)
    }  # fmt: skip
    assert len({job.call.seed for job in jobs[:4]}) == 1  # like compared with like
    assert all(0 <= job.call.seed < 2**32 for job in jobs)


def test_variant_seeds_count_on_from_the_first_and_wrap():
    assert variant_seeds(7, 3) == (7, 8, 9)
    assert variant_seeds(2**32 - 1, 2) == (2**32 - 1, 0)


def test_inputs_of_one_name_from_two_folders_are_refused():
    with pytest.raises(InputError, match="several inputs are named x"):
        plan_sweep([Source(Path("a/x.png")), Source(Path("b/x.png"))], FOX)
    kept_apart = [Source(Path("a/x.png"), Path("a")), Source(Path("b/x.png"), Path("b"))]
    assert len(plan_sweep(kept_apart, FOX)) == 2


def test_a_sweep_tries_its_values_in_place_of_the_calls_own_and_keeps_the_rest():
    call = CallSettings("fox", negative_prompt="blur", strength=0.3, num_inference_steps=20,
                        seed=5, scheduler="euler", sdxl=(("prompt_2", "a fox"),))  # fmt: skip
    (kept,) = plan_sweep(_sources("a.png"), call)
    assert kept.call == call
    jobs = plan_sweep(_sources("a.png"), call, Sweep(guidance=(1.0, 2.0)))
    assert [job.call.guidance_scale for job in jobs] == [1.0, 2.0]
    assert all(job.call == call.with_values(guidance_scale=job.call.guidance_scale) for job in jobs)


def test_a_job_reads_its_settings_by_their_keys_and_labels_what_it_makes():
    job = Job(Source(Path("a.png")), CallSettings("fox", strength=0.5, seed=3, scheduler="lcm"))
    assert (job.value_by_key("strength"), job.value_by_key("steps")) == (0.5, 50)
    assert (job.value_by_key("guidance"), job.value_by_key("sampler")) == (7.5, "lcm")
    assert job.label == "a.png (strength 0.5, seed 3)" and job.image_count == 1
    labels = setting_labels(job.call, "euler")
    assert labels["fastimg:scheduler"] == "euler" and labels["fastimg:negative_prompt"] == ""
    assert (labels["fastimg:steps"], labels["fastimg:guidance"]) == (50, 7.5)
    assert shown(0.5) == "0.5" and shown(7.0) == "7" and shown(3) == "3"


def test_draw_seeds_fills_only_the_missing_ones():
    given, missing = (
        Job(Source(Path("a.png")), FOX.with_values(seed=4)),
        Job(Source(Path("b.png")), FOX),
    )
    kept, drawn = draw_seeds([given, missing])
    assert kept is given and 0 <= drawn.call.seed < 2**32
    assert drawn.call == FOX.with_values(seed=drawn.call.seed)
    with pytest.raises(InputError, match="more than 100000"):
        plan_sweep(_sources("a.png"), FOX, Sweep(seeds=tuple(range(100_001))))


def test_one_image_size_is_one_input_or_inputs_resized_to_one_size_with_one_call_shape():
    from fastimg.workflows.jobs import one_image_size

    one = plan_sweep(_sources("a.png"), FOX, Sweep(strength=(0.3, 0.6), seeds=(1, 2)))
    assert one_image_size(one, resized=False)
    two = plan_sweep(_sources("a.png", "b.png"), FOX, Sweep(seeds=(1,)))
    assert not one_image_size(two, resized=False)  # two inputs: sizes of their own
    assert one_image_size(two, resized=True)  # --size: one size for every input
    cfg_on_and_off = plan_sweep(_sources("a.png"), FOX, Sweep(guidance=(1.0, 7.5), seeds=(1,)))
    assert not one_image_size(cfg_on_and_off, resized=True)  # a UNet batch of 1, then 2
    guided = plan_sweep(_sources("a.png"), FOX, Sweep(guidance=(3.0, 7.5), seeds=(1,)))
    assert one_image_size(guided, resized=False)
    more_images = [*one, Job(one[0].source, one[0].call.with_values(num_images_per_prompt=2))]
    assert not one_image_size(more_images, resized=True)
    other_prompt = [*one, Job(one[0].source, one[0].call.with_values(prompt="a hare"))]
    assert not one_image_size(other_prompt, resized=True)
    assert one_image_size([], resized=False)
