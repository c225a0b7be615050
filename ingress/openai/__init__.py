"""The OpenAI API on the mesh: chat completions, models and Responses as mesh turns."""
