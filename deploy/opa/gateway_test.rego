# `opa test deploy/opa`: the decisions of gateway.rego on a few inputs.
package soma.gateway_test

import data.soma.gateway

base := {
	"tenant": {"name": "acme", "fail_open": false},
	"principal": "key:k1",
	"persona": "default",
	"model": "",
	"usage": {"tokens_used": 0, "tokens_reserved": 0, "seconds_to_reset": 100},
	"limits": {"tokens_per_day": 100, "models_allow": ["openai/*"], "models_deny": ["openai/gpt-4*"], "max_output_tokens": 20},
	"request": {"kind": "message", "action": null, "estimated_tokens": 30},
}

test_fits_the_budget if {
	gateway.decision.allow with input as base
}

test_exactly_the_remaining_budget_is_allowed if {
	gateway.decision.allow with input as object.union(base, {"usage": {"tokens_used": 50, "tokens_reserved": 20, "seconds_to_reset": 100}})
}

test_over_the_budget_waits_for_the_reset if {
	d := gateway.decision with input as object.union(base, {"usage": {"tokens_used": 50, "tokens_reserved": 21, "seconds_to_reset": 100}})
	not d.allow
	d.reason == "budget_exhausted"
	d.retry_after == 100
}

test_unlimited_budget if {
	gateway.decision.allow with input as object.union(base, {
		"usage": {"tokens_used": 1e9, "tokens_reserved": 0, "seconds_to_reset": 1},
		"limits": {"tokens_per_day": 0, "models_allow": ["*"], "models_deny": []},
	})
}

test_a_turn_bigger_than_the_whole_budget_never_fits if {
	d := gateway.decision with input as object.union(base, {"request": {"kind": "message", "estimated_tokens": 101}})
	d.reason == "request_exceeds_budget"
	d.retry_after == 0
}

test_denied_model_wins_over_budget if {
	d := gateway.decision with input as object.union(base, {
		"model": "openai/gpt-4o",
		"usage": {"tokens_used": 100, "tokens_reserved": 0, "seconds_to_reset": 5},
	})
	d.reason == "model_not_allowed"
}

test_model_outside_the_allow_list if {
	d := gateway.decision with input as object.union(base, {"model": "anthropic/claude"})
	not d.allow
	d.reason == "model_not_allowed"
}

test_allowed_model if {
	gateway.decision.allow with input as object.union(base, {"model": "openai/gpt-3.5"})
}

test_incomplete_input_is_denied if {
	d := gateway.decision with input as {"tenant": {"name": "acme"}}
	not d.allow
	d.reason == "policy_incomplete_input"
}
