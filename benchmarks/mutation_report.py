"""Write ``benchmarks/results/mutation.md``: the score before and after the tests that the
first run's survivors prompted, and the fate of every one of those survivors (killed since,
by which tests; argued equivalent; or still surviving, and why).

Reads ``mutation.json``, ``mutation_survivors_before.md`` (written by ``mutation.py --label
before``), mutmut's current verdicts and ``benchmarks/mutation_equivalent.json``.
Usage: ``python benchmarks/mutation_report.py`` after ``benchmarks/mutation.sh --label after``.
"""

import json
import re

from mutation import EQUIVALENT, KILLED, RESULTS, diff_line, verdicts

#: the tests written for the survivors of each function (mutmut names without the number)
KILLING_TESTS = {
    "semi_amortized.xǁSemiAmortizedSVIǁevaluate_metrics": "test_semi_amortized.py::"
    "test_evaluation_refines_in_eval_mode_in_the_documented_minibatches_and_reports_the_gap, "
    "test_evaluation_batches_default_to_500, test_svi_mode_refines_from_the_prior_and_"
    "reports_no_amortized_bound",
    "semi_amortized.xǁSemiAmortizedSVIǁrefined_guide": "test_semi_amortized.py::test_refined_"
    "guide_defaults_to_minibatches_of_50_and_passes_the_plate_size, "
    "test_evaluation_refines_in_eval_mode_in_the_documented_minibatches_and_reports_the_gap",
    "refine.x_refined_guide": "test_semi_amortized.py::test_evaluation_refines_in_eval_mode_in_"
    "the_documented_minibatches_and_reports_the_gap, test_svi_mode_refines_from_the_prior_and_"
    "reports_no_amortized_bound",
    "semi_amortized.xǁSemiAmortizedSVIǁ_latent_dim": "test_semi_amortized.py::test_svi_mode_"
    "reads_the_latent_size_from_a_guide_without_an_encoder",
    "semi_amortized.xǁSemiAmortizedSVIǁinitial_params": "test_semi_amortized.py::test_svi_mode_"
    "reads_the_latent_size_from_a_guide_without_an_encoder, test_svi_mode_refines_from_the_"
    "prior_and_reports_no_amortized_bound",
    "semi_amortized.xǁSemiAmortizedSVIǁevaluate_loss": "test_semi_amortized.py::test_evaluate_"
    "loss_is_the_scaled_beta_bound_at_the_refined_parameters",
    "semi_amortized.xǁSemiAmortizedSVIǁrefine": "test_semi_amortized.py::test_evaluate_loss_is_"
    "the_scaled_beta_bound_at_the_refined_parameters",
    "semi_amortized.x__has_cuda_rnn": "test_semi_amortized.py::test_cudnn_is_switched_off_only_"
    "for_recurrent_networks_on_cuda",
    "semi_amortized.xǁSemiAmortizedSVIǁ_rnn_context": "test_semi_amortized.py::test_cudnn_is_"
    "switched_off_only_for_recurrent_networks_on_cuda",
    "semi_amortized.xǁSemiAmortizedSVIǁloss_and_surrogate": "test_semi_amortized.py::test_step_"
    "and_surrogate_carry_size_and_beta, test_kl_mode_adds_the_encoders_kl_to_the_refined_"
    "posterior",
    "semi_amortized.xǁSemiAmortizedSVIǁstep": "test_semi_amortized.py::test_step_and_surrogate_"
    "carry_size_and_beta, test_evaluation_refines_in_eval_mode_in_the_documented_minibatches_"
    "and_reports_the_gap",
    "semi_amortized.xǁSemiAmortizedSVIǁ__init__": "test_semi_amortized.py::test_semi_amortized_"
    "defaults_are_the_authors_and_limits_are_inclusive",
    "semi_amortized.x__family": "test_components.py::test_kl_mode_refuses_a_family_without_a_"
    "closed_form_kl (mapped to the module since)",
    "guides.guide.xǁFlowGuideǁ": "test_behaviour.py::test_flow_guide_builds_the_flows_it_is_asked_"
    "for, test_components.py (mapped to the module since)",
    "elbos.xǁJitELBOǁ__init__": "test_elbos.py::test_wrappers_carry_the_wrapped_settings, "
    "test_jit_elbo_keeps_tracer_warnings_quiet",
    "elbos.xǁPerDatapointBoundǁ__init__": "test_elbos.py::test_wrappers_carry_the_wrapped_settings",
    "elbos.xǁPerDatapointBoundǁ__repr__": "test_elbos.py::test_wrappers_carry_the_wrapped_settings",
    "elbos.xǁJitELBOǁ_get_trace": "test_elbos.py::test_wrapped_elbos_trace_model_and_guide_as_"
    "the_wrapped_elbo",
    "elbos.xǁPerDatapointBoundǁ_get_trace": "test_elbos.py::test_wrapped_elbos_trace_model_and_"
    "guide_as_the_wrapped_elbo",
    "elbos.xǁPerDatapointBoundǁloss": "test_elbos.py::test_per_datapoint_bound_returns_the_scaled_"
    "loss_and_passes_beta, test_per_datapoint_bound_restores_gradients_of_parameters_it_did_not_"
    "touch",
    "elbos.xǁJitELBOǁloss": "test_elbos.py::test_jit_elbo_is_trace_elbo_on_the_same_draws",
    "elbos.x__check_particles": "test_elbos.py::test_bad_particle_counts_are_config_errors",
    "refine.xǁRefinementǁoptions": "test_refine.py::test_refinement_options_round_trip",
    "refine.xǁRefinementǁ": "test_refine.py::test_refinement_ascends_the_plain_elbo_by_default_"
    "and_divides_by_the_given_batch",
    "refine.x_clip_tensor_norm": "test_refine.py::test_two_steps_equal_algorithm_1_by_hand[1e3]",
    "checkpoint.x_get_rng_state": "test_fit.py::test_rng_state_carries_every_gpu_generator_where_"
    "there_are_gpus",
    "checkpoint.x_set_rng_state": "test_fit.py::test_rng_state_carries_every_gpu_generator_where_"
    "there_are_gpus",
    "checkpoint.x_load": "test_fit.py::test_checkpoint_load_says_what_is_wrong_and_unpickles_no_"
    "code",
    "checkpoint.x_atomic_write_json": "test_fit.py::test_json_files_are_written_sorted_and_indented",
    "encoders.xǁMLPEncoderǁ": "test_behaviour.py::test_mlp_encoder_is_its_formula_layer_by_layer",
    "mlp.xǁMLPDecoderǁ": "test_behaviour.py::test_mlp_decoder_defaults_to_skip_and_keeps_its_"
    "latent_size",
    "svi.xǁSVIǁ": "test_objectives.py::test_svi_with_a_pyro_optimizer_and_its_sizes",
    "svi.x_apply_gradients": "test_objectives.py::test_svi_with_a_pyro_optimizer_and_its_sizes",
    "xǁModelǁ__init__": "test_behaviour.py::test_models_and_guides_are_named_for_what_they_are_"
    "and_forgotten_when_collected",
    "xǁGuideǁ__init__": "test_behaviour.py::test_models_and_guides_are_named_for_what_they_are_"
    "and_forgotten_when_collected",
    "xǁRefinementǁ__post_init__": "test_refine.py::test_momentum_zero_is_allowed_and_a_string_is_"
    "a_config_error",
    "svi.xǁSVIǁevaluate_metrics": "test_objectives.py::test_svi_evaluates_in_eval_mode_with_the_"
    "amortized_guide",
}

#: why a survivor that is not equivalent still survives the CPU suite
UNKILLABLE_HERE = {
    "distributed": "only differs under torch.distributed (the global minibatch or the "
    "all-reduce weights), which tests/test_distributed.py covers outside the mutation run",
    "positional": "only differs for a model taking positional arguments besides x, which the "
    "site contract (model(x, *, size, beta)) does not have; no test builds one",
    "held": "only differs when a parameter that already held a gradient is in this loss's "
    "trace but gets no gradient from it; no test builds that case",
    "keyword": "only differs when step is given x as a keyword: the minibatch size then falls "
    "back to 1 (a weakness of SVI.step, left as is; the site contract passes x by position)",
    "encoder": "only differs for a guide whose encoder has no latent_dim (every Encoder has one)",
    "message": "changes only the end of the kl-mode refusal's message; the test matches the start",
    "unanalysed": "not analysed in the time this run had",
    "cuda": "only differs on a CUDA device (a GPU checkpoint loaded on a CPU; β's tensor "
    "on the CPU while the data are on a GPU)",
}
REASONS = {
    "semi_amortized.xǁSemiAmortizedSVIǁloss_and_surrogate__mutmut_26": "distributed",
    "semi_amortized.xǁSemiAmortizedSVIǁloss_and_surrogate__mutmut_34": "distributed",
    "semi_amortized.xǁSemiAmortizedSVIǁstep__mutmut_22": "distributed",
    "semi_amortized.xǁSemiAmortizedSVIǁstep__mutmut_29": "distributed",
    **{f"svi.x_apply_gradients__mutmut_{i}": "distributed" for i in range(6, 13)},
    "svi.xǁSVIǁstep__mutmut_24": "distributed",
    "elbos.xǁPerDatapointBoundǁloss__mutmut_12": "positional",
    "elbos.xǁPerDatapointBoundǁloss_and_grads__mutmut_17": "positional",
    "elbos.xǁPerDatapointBoundǁloss_and_grads__mutmut_28": "held",
    "svi.xǁSVIǁstep__mutmut_12": "keyword",
    "svi.xǁSVIǁstep__mutmut_15": "keyword",
    "semi_amortized.xǁSemiAmortizedSVIǁ_latent_dim__mutmut_9": "encoder",
    "semi_amortized.xǁSemiAmortizedSVIǁloss_and_surrogate__mutmut_80": "message",
    "semi_amortized.xǁSemiAmortizedSVIǁloss_and_surrogate__mutmut_81": "message",
    "elbos.x__particles__mutmut_5": "unanalysed",
    "elbos.xǁJitELBOǁ_call__mutmut_5": "cuda",
    "elbos.xǁJitELBOǁ_call__mutmut_8": "cuda",
    "checkpoint.x_load__mutmut_7": "cuda",
    "checkpoint.x_load__mutmut_10": "cuda",
}


def _short(name):
    return name.removeprefix("pyro_skipvae.")


def main():
    record = json.loads((RESULTS / "mutation.json").read_text())
    before_md = (RESULTS / "mutation_survivors_before.md").read_text()
    before = re.findall(r"^\| `([^`]+)` \| [^|]+ \| `(.*)` \|$", before_md, flags=re.M)
    equivalent = json.loads(EQUIVALENT.read_text())
    status, _ = verdicts()
    b, a = record["before"], record
    lines = [
        "# Mutation testing: score and survivors",
        "",
        f"Tool: {a['tool']}, `benchmarks/mutation.sh` (configuration in `setup.cfg [mutmut]`,",
        "per-module test files in `tests/conftest.py`), one process",
        f"(`--max-children 1`), on a {a['machine'].split(';')[0]}; {a['date']}.",
        "",
        "| | killed | survived | equivalent | score killed / (killed + survived) |",
        "|---|---|---|---|---|",
        f"| before (tests of {b['commit']}) | {b['killed']} | {b['survived']} | "
        f"{b['equivalent']} | {b['score']:.3f} |",
        f"| after (commit {a['commit']}) | {a['killed']} | {a['survived']} | {a['equivalent']} | "
        f"{a['score']:.3f} |",
        "",
        f"Wall time: the first full run {b['wall_seconds'] / 60:.0f} min ({b.get('note', '')}); "
        f"the latest rerun of the survivors {a['wall_seconds'] / 60:.0f} min.",
        "",
        "Modules mutated: " + ", ".join(f"`{m}`" for m in a["modules"]) + ".",
        "",
        "**Not mutated** (not yet: a full first run of them does not fit one shared core in the",
        "time this work had; add them to `only_mutate` in `setup.cfg`, cached verdicts of the",
        "others are kept): `models/likelihoods.py`, `models/priors.py`,",
        "`models/decoders/pixelcnn.py`, `models/decoders/lstm.py`, `guides/conv.py`,",
        "`guides/lstm.py`, `infer/fit.py`, `infer/optim.py`, `infer/annealing.py`,",
        "`infer/free_bits.py`, `infer/trace_elbo.py`, `infer/distributed.py` and all of",
        "`diagnostics/` (2,606 mutants in all with the modules above, against 1,098 here).",
        "",
        '"Survived" counts every mutant no test killed: mutmut\'s *survived*, *no tests* (no',
        "test of the selection calls the function, or none of the module's mapped test files",
        "does) and *timeout*; *equivalent* ones are argued in",
        "`benchmarks/mutation_equivalent.json` and below.",
        "",
        "## Every survivor of the first run",
        "",
        "| mutant | change | now | why |",
        "|---|---|---|---|",
    ]
    listed = {name for name, _ in before}
    before += [(name, diff_line(name)) for name in sorted(equivalent) if name not in listed]
    for name, change in before:
        change = change.replace("|", "\\|")
        short = _short(name)
        now = status.get(name, "gone (function changed)")
        if name in equivalent:
            now, why = "equivalent", equivalent[name]
        elif now in KILLED:
            now = "killed"
            why = next(
                (t for f, t in KILLING_TESTS.items() if f in short), "the tests of its module"
            )
        else:
            key = next((k for k in REASONS if short.endswith(k)), None)
            why = UNKILLABLE_HERE[REASONS[key]] if key else "not killed yet"
        lines.append(f"| `{short}` | `{change}` | {now} | {why} |")
    (RESULTS / "mutation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
