-- A plan of a 1B-parameter model (BENCHMARKS.md, "Plan mode"): ftl check bench/plan_1b.lua model=/tmp/sparse1b
local ftl = require("ftl")
local m = ftl.load(ftl.args.model)
ftl.lora(m, {targets = "all-linear", r = 16})
local rows = {}
for i = 1, 64 do rows[i] = {text = string.rep("some words ", 20)} end
ftl.train(m, ftl.data.from(rows, {format = "text"}), {batch_size = 8, max_len = 512, epochs = 1, lr = 1e-4})
