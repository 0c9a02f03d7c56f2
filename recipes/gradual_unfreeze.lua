-- gradual_unfreeze: train the top block first, then unfreeze one more block downwards every few steps (ULMFiT).
--
--   ftl run recipes/gradual_unfreeze.lua [model=HuggingFaceTB/SmolLM2-135M-Instruct] [every=10]
--     [down_to=0] [steps=60] [lr=1e-4] [batch_size=8] [max_len=256] [seed=1]
--
-- `model=` is an HF model directory, a .gguf file or a hub id in the local Hugging Face cache.
-- Only the top transformer block trains at first; every `every` steps the on_step callback that
-- schedule.gradual_unfreeze builds unfreezes the next block below (down to block `down_to`),
-- from the following step on. Lower blocks move later and less, which protects what they know.
-- The data (data/instruct.jsonl) is split 80/20; the held-out loss is printed before and after.
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")
local layers = m:info().layers
presets.top_layers(m, 1)
print(string.format("trainable %d of %d parameters at the start (layer %d of %d)", m:info().trainable,
  m:info().base_params, layers - 1, layers))

-- a short prompt ("Give the plural of the word. knife\n" -> "knives") rather than the Alpaca template,
-- so that small models and short max_len keep the answer
local data = ftl.data.jsonl("data/instruct.jsonl", {format = "instruction", template = "{instruction} {input}\n"})
local train, eval = data:split(0.8, {seed = args.seed or 1})
local before = ftl.evaluate(m, eval)
local steps = args.steps or 60
local on_step = schedule.gradual_unfreeze(m, {every = args.every or 10, down_to = args.down_to or 0,
  on_unfreeze = function(layer, step)
    print(string.format("step %d: unfroze layer %d, trainable %d", step, layer, m:info().trainable))
  end})
local r = ftl.train(m, train, {max_steps = steps, batch_size = args.batch_size or 8, max_len = args.max_len or 256,
  lr = args.lr or 1e-4, schedule = "cosine", warmup = schedule.warmup(steps, 0.1), clip = 1.0,
  seed = args.seed or 1, on_step = on_step})
local after = ftl.evaluate(m, eval)
print(string.format("eval loss %.4f -> %.4f after %d steps; trainable %d at the end", before.loss, after.loss,
  r.steps, m:info().trainable))
