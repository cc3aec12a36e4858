"""The naming conventions of generated code (compiler/naming.py): identifiers from user names."""

from dln.compiler.naming import identifier, shared_scope, update_label


def test_identifiers_keep_the_end_of_a_long_name_and_its_prefix():
    assert identifier("grad:h.weight") == "grad_h_weight"
    assert identifier("new:optim.loss.layer_0.block.attn.out_proj.weight.exp_avg_sq") == \
        "new_out_proj_weight_exp_avg_sq"
    assert identifier("grad:" + "x" * 60).startswith("grad_")
    assert identifier("grad:_") == "grad" and identifier("_") == ""


def test_a_value_two_bindings_share_is_named_by_their_scope():
    assert shared_scope("optimizer.h.weight", "optimizer.logits.bias") == "optimizer"
    assert shared_scope("grad:h", "grad:logits") == "grad:h"      # nothing shared: the first keeps it
    assert shared_scope("enc.fc1", "enc.fc1") == "enc.fc1"


def test_update_labels_name_one_two_or_the_first_of_many():
    assert update_label(["h.weight"]) == "update_h_weight"
    assert update_label(["h.bias", "logits.bias"]) == "update_h_bias_and_logits_bias"
    assert update_label(["h.bias", "logits.weight", "logits.bias"]) == "update_h_bias_and_2_more"
    long = ["layer_1.block.attn.out_proj.bias", "layer_1.block.mlp.proj.bias"]
    assert update_label(long) == "update_layer_1_block_attn_out_proj_bias_and_1_more"
