-- {{name}}: {{desc}}
--
--   ftl run {{name}}.lua model=PATH_OR_HUB_ID [steps=100] [lr={{lr}}] [batch_size=8] [data=rows.jsonl]
--
-- A starter recipe written by `ftl new`; edit it freely. `model=` is an HF model directory, a
-- .gguf file or a hub id in the local Hugging Face cache. Without data= it trains on the few
-- example rows below; with data= on a JSONL file of {"instruction": ..., "input": ..., "output": ...}
-- rows (format = "text", "chat" and "classification" read other shapes). `ftl ls` lists the
-- built-in recipes (`ftl cp NAME PATH` copies one) and the stdlib modules used here.
local ftl = require("ftl")
local presets = require("presets")
local schedule = require("schedule")

local args = ftl.args
local m = ftl.load(args.model or "HuggingFaceTB/SmolLM2-135M-Instruct")

-- the method (stdlib/presets.lua: each preset takes options that override its defaults)
{{attach}}
print(string.format("trainable %d of %d parameters", m:info().trainable, m:info().base_params))

local rows = {
  {instruction = "Give the opposite of the word.", input = "hot", output = "cold"},
  {instruction = "Give the opposite of the word.", input = "big", output = "small"},
  {instruction = "Give the opposite of the word.", input = "fast", output = "slow"},
  {instruction = "Give the opposite of the word.", input = "open", output = "closed"},
  {instruction = "Give the plural of the word.", input = "cat", output = "cats"},
  {instruction = "Give the plural of the word.", input = "box", output = "boxes"},
  {instruction = "Give the plural of the word.", input = "child", output = "children"},
  {instruction = "Give the plural of the word.", input = "mouse", output = "mice"},
}
-- a short prompt template instead of the default Alpaca one, which small models truncate
local prep = {format = "instruction", template = "{instruction} {input}\n"}
local data = args.data and ftl.data.jsonl(args.data, prep) or ftl.data.from(rows, prep)
local train, eval = data:split(0.75, {seed = 1})

local steps = args.steps or 100
local before = ftl.evaluate(m, eval)
local r = ftl.train(m, train, {
  max_steps = steps,
  batch_size = args.batch_size or 8,
  lr = args.lr or {{lr}},
  schedule = "cosine",
  warmup = schedule.warmup(steps, 0.1), -- 10% of the steps
  clip = 1.0,
  seed = 1,
})
local after = ftl.evaluate(m, eval)
print(string.format("eval loss %.4f -> %.4f after %d steps (%.0f tokens/s)", before.loss, after.loss, r.steps,
  r.tokens_per_s))
{{save}}
