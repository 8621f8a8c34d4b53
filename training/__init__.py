"""Training the tiny MoTE (DESIGN.md section 7): data, task tokenizer, dense -> MoTE / fp-MoE, eval."""
