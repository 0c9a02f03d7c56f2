-- full: full fine-tuning, every weight of a causal LM trained, on a small instruction set.
--
--   ftl run recipes/full.lua [model=HuggingFaceTB/SmolLM2-135M-Instruct] [steps=60] [lr=5e-5]
--     [batch_size=8] [max_len=256] [seed=1] [save=true]
--
-- `model=` is an HF model directory, a .gguf file or a hub id in the local Hugging Face cache.
-- The data (data/instruct.jsonl: opposites and plurals of English words) is split 80/20; the
-- held-out loss is printed before and after training. The baseline every PEFT method is measured
-- against: the most memory (gradients and AdamW state for every weight). The trained model is
-- written to OUT/model as a complete HF model directory (save=false skips it).
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
presets.full(m)
print(string.format("trainable %d of %d parameters (full fine-tuning)", m:info().trainable, m:info().base_params))

-- a short prompt ("Give the plural of the word. knife\n" -> "knives") rather than the Alpaca template,
-- so that small models and short max_len keep the answer
local data = ftl.data.jsonl("data/instruct.jsonl", {format = "instruction", template = "{instruction} {input}\n"})
local train, eval = data:split(0.8, {seed = args.seed or 1})
local before = ftl.evaluate(m, eval)
local steps = args.steps or 60
local r = ftl.train(m, train, {max_steps = steps, batch_size = args.batch_size or 8, max_len = args.max_len or 256,
  lr = args.lr or 5e-5, schedule = "cosine", warmup = schedule.warmup(steps, 0.1), clip = 1.0,
  seed = args.seed or 1})
local after = ftl.evaluate(m, eval)
print(string.format("eval loss %.4f -> %.4f after %d steps (%.0f tokens/s, optimizer state %.1f MB)", before.loss,
  after.loss, r.steps, r.tokens_per_s, r.optimizer_bytes / 1e6))
if args.save ~= false then print("saved " .. m:save("model")) end
