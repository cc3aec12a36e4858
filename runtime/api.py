Model = compile = train = None
