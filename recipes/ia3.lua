-- ia3: IA3, learned scaling vectors on the keys, values and feed-forward activations; the fewest parameters.
--
--   ftl run recipes/ia3.lua [model=HuggingFaceTB/SmolLM2-135M-Instruct] [steps=60] [lr=1e-2]
--     [batch_size=8] [max_len=256] [seed=1]
--
-- `model=` is an HF model directory, a .gguf file or a hub id in the local Hugging Face cache.
-- The data (data/instruct.jsonl: opposites and plurals of English words) is split 80/20; the
-- held-out loss is printed before and after training.
-- IA3 multiplies PEFT's default targets (k_proj, v_proj, down_proj for llama) by learned vectors
-- that start at one; it wants a higher learning rate than LoRA. Written in PEFT's format to
-- OUT/adapter; `ftl merge` folds it.
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
local ia3 = presets.ia3(m)
print(string.format("trainable %d of %d parameters (IA3 on %d modules)", m:info().trainable,
  m:info().base_params, #ia3:targets()))

-- a short prompt ("Give the plural of the word. knife\n" -> "knives") rather than the Alpaca template,
-- so that small models and short max_len keep the answer
local data = ftl.data.jsonl("data/instruct.jsonl", {format = "instruction", template = "{instruction} {input}\n"})
local train, eval = data:split(0.8, {seed = args.seed or 1})
local before = ftl.evaluate(m, eval)
local steps = args.steps or 60
local r = ftl.train(m, train, {max_steps = steps, batch_size = args.batch_size or 8, max_len = args.max_len or 256,
  lr = args.lr or 1e-2, schedule = "cosine", warmup = schedule.warmup(steps, 0.1),
  clip = 1.0, seed = args.seed or 1})
local after = ftl.evaluate(m, eval)
print(string.format("eval loss %.4f -> %.4f after %d steps (%.0f tokens/s)", before.loss, after.loss, r.steps,
  r.tokens_per_s))
print("saved " .. m:save_adapter("adapter"))
