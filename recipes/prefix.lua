-- prefix: Prefix tuning, learned keys and values prepended to every layer's attention.
--
--   ftl run recipes/prefix.lua [model=HuggingFaceTB/SmolLM2-135M-Instruct] [steps=60] [lr=1e-2] [tokens=16]
--     [batch_size=8] [max_len=256] [seed=1]
--
-- `model=` is an HF model directory, a .gguf file or a hub id in the local Hugging Face cache.
-- The data (data/instruct.jsonl: opposites and plurals of English words) is split 80/20; the
-- held-out loss is printed before and after training.
-- The model's weights stay untouched; each layer attends to `tokens` extra learned positions.
-- Written in PEFT's format (PREFIX_TUNING) to OUT/adapter.
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
presets.prefix(m, {tokens = args.tokens or 16})
print(string.format("trainable %d of %d parameters (prefix of %d tokens)", m:info().trainable,
  m:info().base_params, args.tokens or 16))

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
