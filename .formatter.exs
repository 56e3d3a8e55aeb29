[
  inputs: ["{mix,.formatter}.exs", "{config,lib,examples,test}/**/*.{ex,exs}"]
]
