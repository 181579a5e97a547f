"""The suite: one folder per package it specifies, support/ for the harness."""
