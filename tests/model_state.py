"""State of a model that relevance must leave unchanged."""


def model_state(model):
    hooks = [
        (name, len(module._forward_hooks), len(module._forward_pre_hooks), len(module._backward_hooks))
        for name, module in model.named_modules()
    ]
    return {
        "hooks": hooks,
        "requires_grad": [parameter.requires_grad for parameter in model.parameters()],
        "training": model.training,
        "attention": model.config.get_text_config()._attn_implementation,
        "output_attentions": model.config.get_text_config().output_attentions,
    }


def assert_no_gradients(model):
    assert all(parameter.grad is None for parameter in model.parameters())
